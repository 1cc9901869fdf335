"""The output folder of one ``python -m nbclust.fit`` run (``--out DIR``).

- :meth:`RunDir.claim`, before the first epoch: ``DIR`` must be new or empty (or, resumed in
  place, hold the run's checkpoint); its missing folders are created and it is locked for the run's
  life (an ``flock`` on ``DIR/.nbclust.lock``, which the kernel drops when the process dies, so the
  lock file of a killed run never blocks the next one); the temporaries of dead nbclust processes
  in ``DIR`` are removed (:func:`nbclust.data.io.remove_stale`), nothing else.
- ``DIR`` itself is never renamed or replaced: a symlink's target or a mount point receives the
  files, and a resumed folder keeps every file nbclust did not write.
- :meth:`RunDir.results` stages the results in a hidden folder inside ``DIR`` and renames each file
  into ``DIR`` (``metrics.json`` last, so a folder with ``metrics.json`` is complete), then removes
  the checkpoint; a failed write removes the staging folder and leaves ``DIR`` as it was.
- :meth:`RunDir.release` unlocks and removes the folders the claim created if they are still empty
  (a run that failed before its first checkpoint leaves nothing).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from nbclust.data import io

LOCK = ".nbclust.lock"
CHECKPOINT = "checkpoint.npz"


class RunDir:
    """``--out DIR`` of one run."""

    def __init__(self, path):
        self.path = Path(path)
        self.created: list[Path] = []  # folders this run made, outermost first
        self._lock_fd = None

    # ------------------------------------------------------------------ claim, release
    def claim(self, *, run_id=None, in_place=False):
        """Check, create and lock ``DIR``, before the first epoch; a ``ValueError`` naming the problem
        (and nothing left behind).  ``DIR`` must be new or empty, except that resuming in place
        (``in_place``) accepts the run's own folder, and resuming run ``run_id`` into another folder
        accepts one whose checkpoint is of the same run."""
        where = f"--out {self.path}"
        if self.path.is_symlink() and not self.path.exists():
            raise ValueError(f"{where} is a symlink to the missing {os.readlink(self.path)}; create that folder "
                             "or name another one")
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{where} is an existing file; name a new folder")
        missing, first = [], self.path
        while not first.exists():
            missing.append(first)
            first = first.parent
        if not first.is_dir():
            raise ValueError(f"{where}: {first} is a file, not a folder")
        try:
            for folder in reversed(missing):
                try:
                    folder.mkdir()
                    self.created.append(folder)
                except FileExistsError:  # a concurrent run made it: the lock decides
                    if not folder.is_dir():
                        raise
            self._lock(where)
            if not (in_place or self._holds_run(run_id)):
                others = [p for p in self.path.iterdir() if p.name != LOCK and not io.is_stale(p)]
                if others:
                    hint = f" or --resume {self.path}" if (self.path / CHECKPOINT).exists() else ""
                    raise ValueError(f"{where} already exists and is not empty; choose a new folder{hint}")
            io.remove_stale(self.path)
        except OSError as exc:
            self.release()
            raise ValueError(f"{where}: cannot write there ({exc.strerror or exc})") from None
        except BaseException:
            self.release()
            raise

    def _holds_run(self, run_id) -> bool:
        """Whether ``DIR/checkpoint.npz`` is a checkpoint of run ``run_id``."""
        if run_id is None or not (self.path / CHECKPOINT).exists():
            return False
        try:
            meta = io.load_state(self.path / CHECKPOINT)[1]
        except ValueError:
            return False
        run = meta.get("nbclust_run")
        return isinstance(run, dict) and run.get("id") == run_id

    def _lock(self, where):
        path = self.path / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").split()
                os.close(fd)
                pid = f" (pid {holder[0]})" if holder else ""
                raise ValueError(f"{where} is in use by another nbclust run{pid}; wait for it to finish or "
                                 "choose another folder") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:  # its holder removed it between our open and our lock
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {io.HOST}\n".encode())
        self._lock_fd = fd

    def release(self):
        """Unlock; remove the folders the claim created while they are empty."""
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / LOCK)  # still locked: no other run can hold this file now
            os.close(self._lock_fd)
            self._lock_fd = None
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                folder.rmdir()

    # ------------------------------------------------------------------ writing
    def write_checkpoint(self, state):
        io.save_state(self.path / CHECKPOINT, *state)

    def save_state_somewhere(self, state):
        """Write ``state`` as ``DIR/checkpoint.npz``, else into a new folder of the system's temporary
        directory; ``(folder, None)``, or ``(None, the last OSError)`` when neither can be written."""
        try:
            self.write_checkpoint(state)
            return self.path, None
        except OSError:
            pass
        folder = None
        try:
            folder = Path(tempfile.mkdtemp(prefix=f"nbclust-rescue-{self.path.name or 'run'}-"))
            io.save_state(folder / CHECKPOINT, *state)
            return folder, None
        except OSError as exc:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            return None, exc

    @contextlib.contextmanager
    def results(self):
        """Yield a staging folder inside ``DIR``; its files then replace their names in ``DIR``."""
        try:
            stage = Path(tempfile.mkdtemp(prefix=io.temp_prefix("results"), suffix=".tmp", dir=self.path))
        except OSError as exc:
            raise io.write_error(exc, self.path / "metrics.json") from None
        try:
            try:
                yield stage
            except io.WriteError as exc:  # name the file the user will look for, not its staged copy
                name = Path(exc.filename)
                if name.parent == stage:
                    raise io.WriteError(exc.errno, exc.strerror, str(self.path / name.name)) from None
                raise
            for name in sorted(os.listdir(stage), key=lambda n: n == "metrics.json"):
                os.replace(stage / name, self.path / name)
            with contextlib.suppress(FileNotFoundError):
                (self.path / CHECKPOINT).unlink()
        finally:
            shutil.rmtree(stage, ignore_errors=True)
