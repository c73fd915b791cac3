"""Writing result files (light: no torch, so that report jobs stay quick to start)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it, which would leave
    other threads a moment of umask 0)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)  # no /proc (not Linux): the one-off read
    os.umask(umask)
    return umask


def ordinary_permissions(path: str | Path) -> None:
    """mkstemp makes a file private (0600); give a result the mode an ordinary new file gets (0666 less the umask),
    so that collaborators sharing a results folder can read it. A file system without modes keeps its own."""
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~_umask())


@contextmanager
def atomic_output(path):
    """Yield a temporary path beside `path`, moved into place only on success: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        ordinary_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
