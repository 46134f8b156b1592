"""deploy/ against the server it runs: the Dockerfile, the Kubernetes manifests and the KServe
runtime. Every `mlserve` command line in them goes through the real CLI parser and
ServerSettings; every probe and scrape path is requested from the real ASGI app; ports, the bind
address, volumes, selectors and the shutdown budget must line up. Schema validation of the core
Kubernetes objects runs when `kubernetes-validate` is installed (deploy/README.md)."""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mlserve import cli as mlserve_cli
from mlserve.server import cli as server_cli
from mlserve.server.app import create_app
from mlserve.server.models import ModelManager
from mlserve.server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes" / "mlserve.yaml"
K8S_FILES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
TOKEN_PATCH = DEPLOY / "kubernetes" / "admin-token.patch.yaml"
S3_PATCH = DEPLOY / "kubernetes" / "registry-s3.patch.yaml"
FEATURES_PATCH = DEPLOY / "kubernetes" / "features-s3.patch.yaml"
RUNTIME = DEPLOY / "kserve" / "servingruntime.yaml"
ISVC = DEPLOY / "kserve" / "inferenceservice.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SHELLS = ("/bin/sh", "sh", "/bin/bash", "bash")
#: Seconds the app's lifespan gives monitoring to stop, besides the two --shutdown-timeout
#: bounds (uvicorn's drain, then ModelManager.close): app.py, MlserveApp._lifespan.
MONITORING_CLOSE_S = 2.0


# ---- helpers ------------------------------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def k8s() -> list[dict[str, Any]]:
    return load_all(K8S)


def deployment() -> dict[str, Any]:
    return one(k8s(), "Deployment")


def pod_spec(dep: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = dep["spec"]["template"]["spec"]
    return spec


def server_container(pod: dict[str, Any]) -> dict[str, Any]:
    """The container named mlserve (the server; a patch may add sidecars after it)."""
    (container,) = [c for c in pod["containers"] if c["name"] == "mlserve"]
    assert container is pod["containers"][0], "the patches address the server as containers/0"
    return container


def isvc_args() -> list[str]:
    """The args the InferenceService's predictor adds to the runtime container's."""
    model = one(load_all(ISVC), "InferenceService")["spec"]["predictor"]["model"]
    return [str(a) for a in model.get("args", [])]


def shell_commands(container: dict[str, Any],
                   appended: list[str] | None = None) -> list[list[str]]:
    """The simple commands a container runs: its command + args (no command: the image's
    ENTRYPOINT, mlserve), or each command of a `sh -c SCRIPT $0 ARGS...` script, `exec`
    dropped and "$@" replaced by the ARGS after $0. ``appended`` follows the container's args,
    as KServe appends the InferenceService's to the runtime's."""
    command = list(container.get("command") or ["mlserve"])
    args = [str(a) for a in container.get("args") or []] + list(appended or [])
    if command[0] not in SHELLS or command[1:] != ["-c"]:
        return [command + args]
    script, positional = args[0], args[2:]
    out = []
    for part in re.split(r"&&|\|\||;|\n", script):
        words = shlex.split(part)
        if words[:1] == ["exec"]:
            words = words[1:]
        if words:
            out.append([a for w in words for a in (positional if w == "$@" else [w])])
    return out


def mlserve_argvs(container: dict[str, Any],
                  appended: list[str] | None = None) -> list[list[str]]:
    """The arguments of each `mlserve` command the container runs."""
    return [cmd[1:] for cmd in shell_commands(container, appended) if cmd[0] == "mlserve"]


def parse_features(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """``argv`` (an `mlserve features ...` command) through the real top-level parser; the
    command is captured instead of run."""
    from mlserve.features import cli as features_cli

    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(features_cli, "run", lambda args: seen.append(args) or 0)
    try:
        assert mlserve_cli.main(argv) == 0
    except SystemExit as exc:
        pytest.fail(f"`mlserve {shlex.join(argv)}` does not parse (exit {exc.code})")
    assert len(seen) == 1, f"`mlserve {shlex.join(argv)}` is not `mlserve features ...`"
    return seen[0]


def parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """``argv`` through the real top-level `mlserve` parser (mlserve.cli.main); the serve
    command is captured instead of run."""
    seen: list[argparse.Namespace] = []

    def capture(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(server_cli, "run", capture)
    try:
        code = mlserve_cli.main(argv)
    except SystemExit as exc:  # argparse: a bad flag or value
        pytest.fail(f"`mlserve {shlex.join(argv)}` does not parse (exit {exc.code})")
    assert code == 0
    assert len(seen) == 1, f"`mlserve {shlex.join(argv)}` is not `mlserve serve ...`"
    return seen[0]


def settings(args: argparse.Namespace, tmp_path: Path) -> ServerSettings:
    """ServerSettings of parsed flags (their bounds and cross-field checks run); a token file
    path from a manifest is swapped for a real file, which only the pod has."""
    if args.admin_token_file is not None:
        token = tmp_path / "token"
        token.write_text("t0ken\n", encoding="utf-8")
        args = argparse.Namespace(**{**vars(args), "admin_token_file": str(token)})
    return server_cli.settings_from_args(args)


def port_number(port: int | str, container: dict[str, Any]) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert named, f"port name {port!r} is not a port of container {container['name']!r}"
    return int(named[0])


def app_status(paths: list[str], tmp_path: Path) -> dict[str, tuple[int, bytes]]:
    """GET each path from the real ASGI app (as `mlserve serve` builds it, no models)."""
    app = create_app(ModelManager(str(tmp_path / "registry")), ServerSettings(monitoring=False))

    async def get_all() -> dict[str, tuple[int, bytes]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            out = {}
            for path in paths:
                r = await client.get(path)
                out[path] = (r.status_code, r.content)
            return out

    return asyncio.run(get_all())


#: patchMergeKey of the PodSpec lists the patches touch (k8s.io/api core/v1 types.go); other
#: lists (args, command, envFrom) are replaced whole by a strategic merge patch.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}


def stored(doc: Any) -> Any:
    """``doc`` as the API server stores it: empty lists and maps are omitted (``omitempty``),
    so a later patch cannot address them."""
    if isinstance(doc, dict):
        return {k: stored(v) for k, v in doc.items() if v not in ([], {})}
    if isinstance(doc, list):
        return [stored(v) for v in doc]
    return doc


def apply_strategic_merge(doc: Any, patch: Any, field: str = "") -> Any:
    """A strategic merge patch (kubectl patch --type strategic) on a copy of ``doc``: maps
    merge key by key (null deletes), lists with a merge key merge item by item (``$patch:
    delete`` removes one) in kubectl's order, other lists are replaced; then the result is
    :func:`stored`. Checked against the real kubectl where it is installed."""
    def merge(base: Any, change: Any, key: str) -> Any:
        if isinstance(change, dict) and isinstance(base, dict):
            out = dict(base)
            for k, v in change.items():
                if v is None:
                    out.pop(k, None)
                else:
                    out[k] = merge(base.get(k), v, k)
            return out
        if isinstance(change, list) and key in MERGE_KEYS:
            # The patch's items in the patch's order (merged into the item with the same key,
            # or new), then the object's other items: kubectl's order where one list is new,
            # and the same set of items always (kubectl interleaves by position otherwise).
            merge_key = MERGE_KEYS[key]
            existing = {b[merge_key]: b for b in base or []}
            out_list = []
            for item in change:
                old_item = existing.pop(item[merge_key], None)
                if item.get("$patch") == "delete":
                    assert old_item is not None, f"$patch: delete of a missing {key}: {item}"
                else:
                    out_list.append(merge(old_item, item, "") if old_item is not None
                                    else copy.deepcopy(item))
            return out_list + list(existing.values())
        return copy.deepcopy(change)

    return stored(merge(copy.deepcopy(doc), patch, field))


def patched(*patches: Path) -> dict[str, Any]:
    """The stored Deployment after ``kubectl patch`` with each file in turn (a JSON patch for
    admin-token, strategic merge for the others)."""
    dep: dict[str, Any] = stored(deployment())
    for path in patches:
        (doc,) = load_all(path)
        dep = apply_json_patch(dep, doc) if isinstance(doc, list) \
            else apply_strategic_merge(dep, doc)
    return dep


def server_registry(container: dict[str, Any], args: argparse.Namespace) -> str:
    """What the server serves: --registry, else $MLSERVE_REGISTRY of the container."""
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    return str(args.registry or env["MLSERVE_REGISTRY"])


def apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 'add', 'remove' and 'replace' (what the shipped patches use) on a copy of
    ``doc``; a path that does not exist fails, as kubectl's would."""
    out = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] in ("add", "remove", "replace"), f"unsupported op {op['op']!r}"
        *parents, last = op["path"].lstrip("/").split("/")
        target: Any = out
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if op["op"] != "add":
            if isinstance(target, list):
                del target[int(last)]
            else:
                del target[last]  # KeyError: the path is not there
            if op["op"] == "remove":
                continue
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), op["value"])
        else:
            target[last] = op["value"]
    return out


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def runtime_stage() -> list[tuple[str, str]]:
    """The instructions of the Dockerfile's last stage (the image that runs)."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


# ---- every YAML parses; every mlserve command line parses ---------------------------------------


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml")),
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs and all(d is not None for d in docs), f"{path}: empty document"


def test_every_manifest_object_is_complete() -> None:
    for path in [*K8S_FILES, RUNTIME, ISVC]:
        if path in (TOKEN_PATCH, S3_PATCH, FEATURES_PATCH):
            continue
        for doc in load_all(path):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path.name}: {doc}"
            assert doc["metadata"].get("name"), f"{path.name}: a {doc['kind']} without a name"


def test_every_mlserve_command_line_parses(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    found = []
    for dep in [deployment(), patched(TOKEN_PATCH), patched(S3_PATCH)]:
        pod = pod_spec(dep)
        for container in pod.get("initContainers", []) + pod["containers"]:
            found += mlserve_argvs(container)
    for container in one(load_all(RUNTIME), "ServingRuntime")["spec"]["containers"]:
        found += mlserve_argvs(container, isvc_args())
    assert len(found) == 4, f"expected the Deployment's, the patched ones' and KServe's: {found}"
    for argv in found:
        args = parse(argv, monkeypatch)
        settings(args, tmp_path)  # ServerSettings' bounds and cross-field checks
        assert args.models, f"`mlserve {shlex.join(argv)}` serves no model"


def test_dockerfile_entrypoint_and_cmd_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = dict(runtime_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["mlserve"]
    cmd = json.loads(stage["CMD"])
    assert cmd[0] == "serve"
    monkeypatch.setattr(server_cli, "run", lambda args: 0)
    try:
        code = mlserve_cli.main(cmd)
    except SystemExit as exc:  # --help exits 0 after printing; a bad flag exits 2
        code = exc.code
    assert code == 0, f"CMD {cmd} does not parse"


# ---- the server's real routes and ports ----------------------------------------------------------


def test_kubernetes_probes_and_scrape_path_are_routes_of_the_app(tmp_path: Path) -> None:
    dep = deployment()
    container = server_container(pod_spec(dep))
    probes = {kind: container[kind]["httpGet"]["path"]
              for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == "/v2/health/live"
    assert probes["readinessProbe"] == "/v2/health/ready"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    status = app_status([*probes.values(), "/metrics", "/no/such/route"], tmp_path)
    assert status["/no/such/route"][0] == 404  # so the answers below come from real routes
    assert status[probes["startupProbe"]][0] == 200
    assert status["/v2/health/live"] == (200, b'{"live":true}')
    # 503 until the configured models are loaded (none here): the route exists and answers
    assert status["/v2/health/ready"] == (503, b'{"ready":false}')
    assert status["/metrics"][0] == 200 and b"mlserve_" in status["/metrics"][1]


def test_kserve_probes_and_scrape_path_are_routes_of_the_app(tmp_path: Path) -> None:
    runtime = one(load_all(RUNTIME), "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    paths = [container[k]["httpGet"]["path"] for k in ("readinessProbe", "livenessProbe")]
    assert paths == ["/v2/health/ready", "/v2/health/live"]
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    status = app_status([*paths, "/metrics"], tmp_path)
    assert {p: s for p, (s, _) in status.items()} == {
        "/v2/health/ready": 503, "/v2/health/live": 200, "/metrics": 200}


def test_kubernetes_ports_line_up(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = k8s()
    dep = one(docs, "Deployment")
    container = server_container(pod_spec(dep))
    (argv,) = mlserve_argvs(container)
    args = parse(argv, monkeypatch)
    assert args.host == "0.0.0.0", "bound to 127.0.0.1 the pod's port is unreachable"
    (port,) = container["ports"]
    assert port["containerPort"] == args.port
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert port_number(container[kind]["httpGet"]["port"], container) == args.port, kind
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == args.port
    (service_port,) = one(docs, "Service")["spec"]["ports"]
    assert port_number(service_port["targetPort"], container) == args.port


def test_kserve_ports_line_up(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = one(load_all(RUNTIME), "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    (argv,) = mlserve_argvs(container, isvc_args())
    args = parse(argv, monkeypatch)
    assert args.host == "0.0.0.0"
    (port,) = container["ports"]  # KServe routes to the container's one HTTP port
    assert port["containerPort"] == args.port == 8080  # KServe's HTTP port
    for kind in ("readinessProbe", "livenessProbe"):
        assert port_number(container[kind]["httpGet"]["port"], container) == args.port, kind
    assert int(runtime["spec"]["annotations"]["prometheus.kserve.io/port"]) == args.port


def test_dockerfile_exposes_the_servers_default_port_and_the_manifests_use_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    exposed = [int(p.split("/")[0]) for ins, rest in runtime_stage() if ins == "EXPOSE"
               for p in rest.split()]
    assert exposed == [ServerSettings().port]
    (argv,) = mlserve_argvs(server_container(pod_spec(deployment())))
    assert parse(argv, monkeypatch).port in exposed


# ---- shutdown ------------------------------------------------------------------------------------


def test_grace_period_covers_prestop_and_the_servers_shutdown_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After SIGTERM the server drains for up to --shutdown-timeout (uvicorn), stops
    monitoring (up to 2 s), then closes its engines within --shutdown-timeout again; the kubelet
    runs preStop before SIGTERM and kills at terminationGracePeriodSeconds."""
    pod = pod_spec(deployment())
    container = server_container(pod)
    (argv,) = mlserve_argvs(container)
    shutdown_s = parse(argv, monkeypatch).shutdown_timeout
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pre_stop_s = float(pre_stop[1])
    grace_s = pod["terminationGracePeriodSeconds"]
    assert grace_s > shutdown_s
    assert grace_s >= pre_stop_s + 2 * shutdown_s + MONITORING_CLOSE_S, (
        f"terminationGracePeriodSeconds {grace_s} < preStop {pre_stop_s} + 2 x "
        f"--shutdown-timeout {shutdown_s} + {MONITORING_CLOSE_S}: the kubelet may SIGKILL a "
        "pod that is still draining")


# ---- volumes, security, the registry copy --------------------------------------------------------


def test_kubernetes_registry_copy_feeds_the_servers_registry(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    pod = pod_spec(deployment())
    container = server_container(pod)
    (argv,) = mlserve_argvs(container)
    registry = server_registry(container, parse(argv, monkeypatch))
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # The server writes SQLite's WAL files beside registry.db: a writable emptyDir
    assert registry in mounts and not mounts[registry].get("readOnly", False)
    assert "emptyDir" in volumes[mounts[registry]["name"]]
    (init,) = pod["initContainers"]
    (copy_cmd,) = shell_commands(init)
    assert copy_cmd[:2] == ["cp", "-R"]
    source, destination = copy_cmd[-2:]
    # SOURCE/. copies the registry's contents into the existing emptyDir, not the folder itself
    assert source.endswith("/."), source
    init_mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert destination.rstrip("/") == registry
    assert init_mounts[registry]["name"] == mounts[registry]["name"]
    source_dir = source.removesuffix("/.")
    assert init_mounts[source_dir].get("readOnly") is True
    claim = volumes[init_mounts[source_dir]["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = one(load_all(DEPLOY / "kubernetes" / "registry-pvc.yaml"), "PersistentVolumeClaim")
    assert claim["claimName"] == pvc["metadata"]["name"]


def test_kserve_serves_the_downloaded_registry_where_it_is(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    runtime = one(load_all(RUNTIME), "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    (argv,) = mlserve_argvs(container, isvc_args())
    # where KServe's storage initializer puts the storageUri's contents (a read-only mount:
    # the registry opens read-only there, tests/unit/test_registry.py)
    assert parse(argv, monkeypatch).registry == "/mnt/models"
    assert "/mnt/models" not in {m["mountPath"] for m in container.get("volumeMounts", [])}


def test_pods_run_non_root_on_a_read_only_root_with_writable_tmp() -> None:
    uid_gid = dict(runtime_stage())["USER"]
    uid = int(uid_gid.split(":")[0])
    assert uid != 0
    pod = pod_spec(deployment())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["automountServiceAccountToken"] is False
    (runtime_container,) = one(load_all(RUNTIME), "ServingRuntime")["spec"]["containers"]
    runtime_volumes = one(load_all(RUNTIME), "ServingRuntime")["spec"]["volumes"]
    assert runtime_container["securityContext"]["runAsUser"] == uid
    for container, volumes in [*((c, pod["volumes"]) for c in pod["initContainers"]),
                               (server_container(pod), pod["volumes"]),
                               (runtime_container, runtime_volumes)]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        if mlserve_argvs(container):
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            names = {v["name"]: v for v in volumes}
            assert "/tmp" in mounts and "emptyDir" in names[mounts["/tmp"]["name"]], (
                f"{container['name']}: the server needs a writable /tmp (Prometheus "
                "multiprocess files with --workers > 1, tempfile)")


def test_admin_token_patch_mounts_a_secret_and_passes_its_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (ops,) = load_all(TOKEN_PATCH)
    patched = apply_json_patch(deployment(), ops)
    pod = pod_spec(patched)
    container = server_container(pod)
    (argv,) = mlserve_argvs(container)
    args = parse(argv, monkeypatch)
    token_file = Path(args.admin_token_file)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(token_file.parent)]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"]
    assert settings(args, tmp_path).admin_token == "t0ken"


def test_registry_s3_patch_serves_the_bucket_with_a_writable_cache(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pod = pod_spec(patched(S3_PATCH))
    container = server_container(pod)
    (argv,) = mlserve_argvs(container)
    registry = server_registry(container, parse(argv, monkeypatch))
    assert registry.startswith("s3://")
    from mlserve._objectstore import normalize_uri

    assert normalize_uri(registry) == registry
    assert "initContainers" not in pod  # the copy is gone, and the empty list with it
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cache = env["MLSERVE_REGISTRY_CACHE"]
    assert cache in mounts and not mounts[cache].get("readOnly", False)
    assert "emptyDir" in volumes[mounts[cache]["name"]]
    assert [e["secretRef"]["name"] for e in container["envFrom"]] == ["mlserve-s3"]
    extras = [rest.split("=", 1)[1] for ins, rest in runtime_stage()
              if ins == "ARG" and rest.startswith("EXTRAS=")]
    assert "s3" in extras[0].split(","), "the image needs boto3 to read the bucket"


PATCH_ORDERS = [list(order) for n in (1, 2, 3)
                for order in itertools.permutations([FEATURES_PATCH, S3_PATCH, TOKEN_PATCH], n)
                if FEATURES_PATCH in order]


@pytest.mark.parametrize("patches", PATCH_ORDERS,
                         ids=lambda ps: "+".join(p.name.split(".")[0] for p in ps))
def test_features_s3_patch_fills_each_pods_online_store_from_the_bucket(
        patches: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The server reads the feature store in the bucket with its online store in an emptyDir,
    which an init container fills before it starts and a sidecar keeps current; patched onto
    the stored Deployment (no empty lists) in any order with the other patches, whose changes
    survive too."""
    pod = pod_spec(patched(*patches))
    server = server_container(pod)
    (argv,) = mlserve_argvs(server)
    args = parse(argv, monkeypatch)
    settings(args, tmp_path)
    server_env = {e["name"]: e.get("value") for e in server["env"]}
    store = str(args.feature_store or server_env["MLSERVE_FEATURE_STORE"])
    from mlserve._objectstore import normalize_uri

    assert store.startswith("s3://") and normalize_uri(store) == store
    volumes = {v["name"]: v for v in pod["volumes"]}

    def cache_volume(container: dict[str, Any]) -> str:
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        cache = env["MLSERVE_FEATURE_STORE_CACHE"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cache]
        assert not mount.get("readOnly", False), "LMDB writes (and locks) there"
        assert "emptyDir" in volumes[mount["name"]]
        assert [e["secretRef"]["name"] for e in container["envFrom"]] == ["mlserve-s3"]
        return str(mount["name"])

    shared = cache_volume(server)
    # LMDB tells readers apart by pid: the server and the sidecar must not both be PID 1.
    assert pod["shareProcessNamespace"] is True
    runs: dict[str, argparse.Namespace] = {}
    for kind in ("initContainers", "containers"):
        for container in pod[kind]:
            for cmd in mlserve_argvs(container):
                if cmd[:1] == ["features"]:
                    got = parse_features(cmd, monkeypatch)
                    assert got.features_command == "materialize" and got.incremental
                    env = {e["name"]: e.get("value") for e in container.get("env", [])}
                    assert (getattr(got, "store", None) or env["MLSERVE_FEATURE_STORE"]) == store
                    assert cache_volume(container) == shared
                    runs[kind] = got
    assert runs["initContainers"].every is None, "the first fill must end for the server to start"
    assert runs["containers"].every and runs["containers"].every > 0
    if S3_PATCH in patches:
        assert server_registry(server, args).startswith("s3://")
        assert [c["name"] for c in pod["initContainers"]] == ["materialize-features"]
        assert "MLSERVE_REGISTRY_CACHE" in server_env
        assert "registry-source" not in volumes
    else:
        assert sorted(c["name"] for c in pod["initContainers"]) == ["copy-registry",
                                                                    "materialize-features"]
    if TOKEN_PATCH in patches:
        assert args.admin_token_file and "admin-token" in volumes
    assert "features" in FEATURES_PATCH.read_text().split("EXTRAS=", 1)[1].split()[0]


def canonical(doc: Any, field: str = "") -> Any:
    """``doc`` with every list that has a merge key sorted by it."""
    if isinstance(doc, dict):
        return {k: canonical(v, k) for k, v in doc.items()}
    if isinstance(doc, list):
        items = [canonical(v) for v in doc]
        return sorted(items, key=lambda i: i[MERGE_KEYS[field]]) if field in MERGE_KEYS \
            else items
    return doc


def kubectl_patched(*patches: Path, tmp_path: Path) -> dict[str, Any]:
    """What the real `kubectl patch --local` makes of the stored Deployment, patch by patch
    (each result stored again, as the API server would)."""
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the strategic merge is checked by the model only")
    dep: dict[str, Any] = stored(deployment())
    for path in patches:
        (doc,) = load_all(path)
        current = tmp_path / "current.yaml"
        current.write_text(yaml.safe_dump(dep), encoding="utf-8")
        done = subprocess.run(
            [kubectl, "patch", "--local", "-f", str(current), "-o", "yaml", "--type",
             "json" if isinstance(doc, list) else "strategic", "--patch-file", str(path)],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"kubectl patch with {path.name}: {done.stderr}"
        dep = stored(yaml.safe_load(done.stdout))
    return dep


@pytest.mark.parametrize("patches", [*PATCH_ORDERS, [S3_PATCH], [S3_PATCH, TOKEN_PATCH],
                                     [TOKEN_PATCH, S3_PATCH]],
                         ids=lambda ps: "+".join(p.name.split(".")[0] for p in ps))
def test_the_patches_compose_as_kubectl_composes_them(patches: list[Path],
                                                      tmp_path: Path) -> None:
    """The real kubectl applies every order of the shipped patches to the stored Deployment,
    the server stays containers/0 (the admin token's JSON patch addresses it so), and the
    model the other tests use gives the same pod."""
    real = pod_spec(kubectl_patched(*patches, tmp_path=tmp_path))
    model = pod_spec(patched(*patches))
    assert real["containers"][0]["name"] == model["containers"][0]["name"] == "mlserve"
    # kubectl interleaves merged lists by position; their order means nothing to Kubernetes
    # (bar containers/0, checked above), so they are compared as sets.
    assert canonical(model) == canonical(real)


# ---- objects that refer to each other ------------------------------------------------------------


def test_service_pdb_and_hpa_select_the_deployments_pods() -> None:
    docs = k8s()
    dep = one(docs, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one(docs, "Service")["spec"]["selector"].items() <= labels.items()
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() \
        <= labels.items()
    hpa = one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= dep["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # CPU utilization is measured against the request
    assert server_container(pod_spec(dep))["resources"]["requests"]["cpu"]
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_kserve_runtime_and_inference_service_match() -> None:
    runtime = one(load_all(RUNTIME), "ServingRuntime")
    isvc = one(load_all(ISVC), "InferenceService")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    spec = runtime["spec"]
    assert [c["name"] for c in spec["containers"]] == ["kserve-container"]
    assert spec["protocolVersions"] == ["v2"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in spec["protocolVersions"]
    formats = {(f["name"], f.get("version")) for f in spec["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["storageUri"]


# ---- the image -----------------------------------------------------------------------------------


def test_dockerfile_builds_cpu_only_without_training_dependencies() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    instructions = dockerfile_instructions()
    assert ("ENV", "MLSERVE_CUDA=OFF") in instructions
    # the build backend and tools of pyproject's [build-system], installed in the builder
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for requirement in pyproject["build-system"]["requires"]:
        assert f'"{requirement}"' in text, f"builder does not install {requirement}"
    extras = [rest.split("=", 1)[1] for ins, rest in runtime_stage()
              if ins == "ARG" and rest.startswith("EXTRAS=")]
    assert extras and "train" not in extras[0].split(","), "torch is for training only"
    assert set(extras[0].split(",")) <= set(pyproject["project"]["optional-dependencies"])
    assert "torch" not in "\n".join(rest for _, rest in runtime_stage())


def test_dockerignore_keeps_what_the_wheel_is_built_from() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    kept = {line[1:].strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
            if line.startswith("!")}
    assert "*" in DOCKERIGNORE.read_text().splitlines(), "an allowlist: ignore all, keep some"
    needed = {"pyproject.toml", "CMakeLists.txt", pyproject["project"]["readme"]}
    needed |= {src.split("/")[0] for src in
               pyproject["tool"]["scikit-build"]["wheel"]["packages"].values()}
    # the top folders of the sources CMakeLists.txt compiles or embeds (comments dropped)
    cmake = re.sub(r"#.*", "", (ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    sources = re.finditer(r"(?<![\w/$}])([a-z_]+)/[\w/.-]+\.(?:c|cc|h|cu|cuh)\b", cmake)
    needed |= {m.group(1) for m in sources} - {"tests"}
    assert needed <= kept, f".dockerignore drops {sorted(needed - kept)}"
    for top in needed:
        assert (ROOT / top).exists(), top


# ---- optional: Kubernetes' own schemas ----------------------------------------------------------


def test_core_objects_match_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    patches = (TOKEN_PATCH, S3_PATCH, FEATURES_PATCH)
    objects = [d for path in K8S_FILES if path not in patches for d in load_all(path)]
    objects += [patched(TOKEN_PATCH), patched(S3_PATCH), patched(FEATURES_PATCH),
                patched(S3_PATCH, FEATURES_PATCH, TOKEN_PATCH)]
    for doc in objects:
        kubernetes_validate.validate(doc, version, strict=True)
