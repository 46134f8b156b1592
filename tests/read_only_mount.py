"""Read-only bind mounts for tests, without privileges: ``unshare -rm`` gives the command new
user and mount namespaces (the network stays the host's, so a server started this way answers
on the host's loopback)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def can_mount_read_only() -> bool:
    """Whether this machine lets an unprivileged process make one (``unshare -rm``)."""
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def read_only_mount_prefix(source: Path, mount: Path) -> list[str]:
    """A command prefix: the command after it runs where ``source`` is bind-mounted read-only
    at ``mount`` (created here), and sees everything else as usual."""
    mount.mkdir(exist_ok=True)
    return ["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$1" "$2" && shift 2 && exec "$@"',
            "sh", str(source), str(mount)]


SKIP_REASON = "needs unshare -rm (user and mount namespaces) for a read-only mount"
