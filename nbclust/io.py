"""Atomic file writes and pickle-free state files (one ``.npz``: arrays + JSON metadata)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

_META = "__meta__"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the user's usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_npy(path, array) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array))


def save_state(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and the JSON-serialisable ``meta`` to one ``.npz``, atomically."""
    if _META in arrays:
        raise ValueError(f"array name {_META!r} is reserved")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{_META: np.array(json.dumps(meta))}, **arrays)


def load_state(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a file written by :func:`save_state` (no pickle); a clear ``ValueError`` if it is not one."""
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
    return arrays, json.loads(str(arrays.pop(_META)))
