"""File modes of what the suite writes (light: no torch, so that report jobs stay quick to start)."""
from __future__ import annotations

import os
from pathlib import Path


def ordinary_permissions(path: str | Path) -> None:
    """mkstemp makes a file private (0600); give a result the mode an ordinary new file gets (0666 less the umask),
    so that collaborators sharing a results folder can read it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
