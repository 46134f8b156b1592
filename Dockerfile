# syntax=docker/dockerfile:1
# The mlserve serving image, CPU only (deploy/README.md).
#
#   docker build -t mlserve:dev .
#   docker run --rm -p 8000:8000 --user "$(id -u):$(id -g)" \
#       -v "$HOME/.mlserve/registry:/models/registry" mlserve:dev \
#       serve --registry /models/registry --model fraud@champion --host 0.0.0.0 --port 8000
#
# (--user: the registry's owner, since SQLite writes its WAL files beside registry.db.)
#
# Stage 1 builds the wheel with the C++ core and no CUDA (MLSERVE_CUDA=OFF), then resolves the
# wheels of every runtime dependency; stage 2 installs them offline on a slim Python, with no
# compiler, no torch (training only) and no build tree. Both stages use the same Python, so the
# extension's ABI tag matches.
#
# Build arguments:
#   PYTHON_VERSION  base image tag (default 3.12)
#   EXTRAS          mlserve extras installed beside the serving core (default "monitoring,s3":
#                   scipy for drift monitoring, /monitoring and /feedback; boto3 for a registry
#                   or feature store on object storage, --registry/--feature-store s3://...;
#                   add "features" for the offline feature-store commands (the materialize
#                   containers of features-s3.patch.yaml); empty for the bare server, which then
#                   runs with monitoring off and says so in its log)

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS builder
ARG EXTRAS=monitoring,s3
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ \
    && rm -rf /var/lib/apt/lists/*
# The build backend and tools, as in the Makefile (no build isolation: pinned here once).
RUN pip install "scikit-build-core>=0.11" "pybind11>=2.13" ninja "cmake>=3.26"
WORKDIR /src
COPY . .
# OFF, not AUTO: the image never needs nvcc, and AUTO would pick one up from a CUDA base image.
ENV MLSERVE_CUDA=OFF
RUN pip wheel --no-deps --no-build-isolation -C build-dir=/tmp/build -w /wheels . \
    && pip wheel --wheel-dir /wheels "$(ls /wheels/mlserve-*.whl)${EXTRAS:+[$EXTRAS]}"

FROM python:${PYTHON_VERSION}-slim
ARG EXTRAS=monitoring,s3
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLSERVE_HOME=/var/lib/mlserve
# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "mlserve${EXTRAS:+[$EXTRAS]}" \
    && mlserve --version
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it (deploy/kubernetes).
RUN groupadd --system --gid 10001 mlserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mlserve --create-home \
       --shell /usr/sbin/nologin mlserve
USER 10001:10001
WORKDIR /var/lib/mlserve
# mlserve serve's default port. Its default bind address is 127.0.0.1: in a container pass
# --host 0.0.0.0, or the port is unreachable from outside.
EXPOSE 8000
# No HEALTHCHECK: the port is a flag of the command, and Kubernetes uses its own probes
# (GET /v2/health/live and /v2/health/ready, deploy/kubernetes/mlserve.yaml).
# mlserve runs as PID 1: the server handles SIGTERM itself (marks itself not ready, drains
# within --shutdown-timeout, closes its engines and exits 0).
ENTRYPOINT ["mlserve"]
CMD ["serve", "--help"]
