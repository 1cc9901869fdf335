"""Atomic file writes, pickle-free state files (one ``.npz``: arrays + JSON metadata) and the
temporaries of interrupted writes.  numpy is imported by the functions that need it (the command
line's ``--help`` and option checks stay light).

Every temporary nbclust makes is named ``.<name>.nbclust-<host>-<pid>-<random>.tmp`` (``host``: 8
hex digits of the host name's SHA-1), beside the file or inside the folder it becomes; a write that
fails removes its own.  A process killed with SIGKILL cannot, so :func:`remove_stale` removes the
ones whose process (same host, another pid) no longer exists, and nothing else.  A failed write
raises :class:`WriteError`, which names the file and the cause (``No space left on device``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

_META = "__meta__"
HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_STALE = re.compile(r"\..+\.nbclust-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-\w+\.tmp")


class WriteError(OSError):
    """Writing ``filename`` failed; ``str``: ``cannot write FILE: CAUSE``."""

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror}"


def temp_prefix(name: str) -> str:
    """The start of the name of a temporary for ``name`` made by this process."""
    return f".{name}.nbclust-{HOST}-{os.getpid()}-"


def is_stale(entry: Path) -> bool:
    """Whether ``entry`` is a temporary of a dead nbclust process of this host."""
    m = _STALE.fullmatch(entry.name)
    return bool(m) and m["host"] == HOST and not pid_alive(int(m["pid"]))


def remove_stale(folder) -> list[Path]:
    """Remove the temporaries in ``folder`` left by dead nbclust processes of this host; the paths removed."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in Path(folder).iterdir():
            if is_stale(entry):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()
                removed.append(entry)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_error(exc: OSError, path) -> WriteError:
    """``exc`` as a :class:`WriteError` naming ``path``."""
    if isinstance(exc, WriteError):
        return exc
    cause = exc.strerror or str(exc)
    return WriteError(exc.errno if exc.errno is not None else errno.EIO, cause, str(path))


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the user's usual mode
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(exc, path) from None
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class _Stream:
    """A file that numpy writes through Python's ``write`` (which reports a full disk as ENOSPC;
    numpy's ``tofile`` on a real file says only ``N requested and M written``)."""

    def __init__(self, file):
        self.write = file.write


def write_npy(path, array) -> None:
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(_Stream(f), np.asarray(array))


def save_state(path, arrays: dict, meta: dict) -> None:
    """Write ``arrays`` and the JSON-serialisable ``meta`` to one ``.npz``, atomically."""
    import numpy as np

    if _META in arrays:
        raise ValueError(f"array name {_META!r} is reserved")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{_META: np.array(json.dumps(meta))}, **arrays)


def load_state(path) -> tuple[dict, dict]:
    """Read a file written by :func:`save_state` (no pickle); a clear ``ValueError`` if it is not one."""
    import numpy as np

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Exception as exc:  # truncated, corrupt or not an npz
        raise ValueError(f"{path}: not a readable nbclust state file ({exc})") from None
    if _META not in arrays:
        raise ValueError(f"{path}: not an nbclust state file (no {_META} entry)")
    try:
        meta = json.loads(str(arrays.pop(_META)))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not an nbclust state file (its {_META} is not JSON: {exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not an nbclust state file (its {_META} is not a JSON object)")
    return arrays, meta
