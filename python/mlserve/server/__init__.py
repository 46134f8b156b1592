"""The KServe v2 (Open Inference Protocol) HTTP server of mlserve.

Modules: ``codecs`` (wire formats: v2 JSON, Triton's binary tensor data extension, msgpack; no
I/O), ``models`` (loaded models and versions), ``app`` (the ASGI application) and ``cli`` (the
``mlserve serve`` command). Importing this package imports none of them, so it stays cheap.
"""

from __future__ import annotations
