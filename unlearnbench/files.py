"""Writing result files (light: no torch, so that report jobs stay quick to start)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


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


def _disk_full(folder: Path, exc: Exception) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    try:  # torch.save and safetensors report a full disk as a RuntimeError of their own
        return shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


@contextmanager
def removed_on_failure(tmp: Path):
    """Delete the temporary file or folder `tmp` if writing it fails (nothing stray is left: at paper scale a
    state file is hundreds of MB), and name a full disk as such instead of a library's stream error."""

    try:
        yield
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, Exception) and _disk_full(tmp.parent, exc):
            raise UserError(
                f"could not write {tmp.parent}: no space left on its disk "
                f"({shutil.disk_usage(tmp.parent).free / 1e6:.0f} MB free); free some and rerun"
            ) from exc
        raise


@contextmanager
def atomic_output(path, suffix: str = ".tmp"):
    """Yield a uniquely named temporary path beside `path` (parallel writers never share one), moved into place
    only on success: readers never see half a file, and a failed write leaves none (a full disk is named).
    `suffix` keeps what a writer insists on: np.savez appends .npz to a name that lacks it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp)
    with removed_on_failure(tmp):
        yield tmp
        ordinary_permissions(tmp)
        os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text through atomic_output, flushed to disk before the rename: a killed job or a full disk leaves either the
    old file or the new one."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# What the aggregate wrote, as `sha256sum` writes it: tables derived from records are published and drawn only as
# their job wrote them (a hand-edited table is refused, not spread), and `sha256sum -c` checks a copy by hand.
DIGESTS = "tables.sha256"


def file_sha256(path: str | Path) -> str:

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_digests(folder: str | Path, names) -> Path:
    """<folder>/tables.sha256: the sha256 of each of `names` (files in `folder`), in `sha256sum` format."""
    folder = Path(folder)
    atomic_write_text(folder / DIGESTS, "".join(f"{file_sha256(folder / name)}  {name}\n" for name in names))
    return folder / DIGESTS


def check_unedited(path: str | Path) -> None:
    """Refuse a table that differs from what its job wrote (the digests beside it name it): a hand-edited
    metrics.csv would otherwise be published, and drawn, as if the records said so."""

    path = Path(path)
    manifest = path.parent / DIGESTS
    if not manifest.is_file():
        return
    recorded = dict(reversed(line.split(None, 1)) for line in manifest.read_text().splitlines() if line.strip())
    want = recorded.get(path.name)
    if want is not None and (not path.is_file() or file_sha256(path) != want):
        raise UserError(
            f"{path} is not what the aggregate wrote (its sha256 differs from {manifest}): it was "
            "edited or replaced after its job. Tables are made from the records only: delete "
            f"{path} and rerun snakemake to remake it from them (to change a result, change its "
            "record's job)"
        )


def publish(paths, to: str | Path) -> None:
    """Copy `paths` into the folder `to`, each checked (check_unedited) before any is copied, each atomically."""
    for path in paths:
        check_unedited(path)
    for path in paths:
        with atomic_output(Path(to) / Path(path).name) as tmp:
            shutil.copyfile(path, tmp)
