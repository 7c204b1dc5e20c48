"""One run folder, one run: created and checked before training, locked while it trains.

The lock is a file, ``run.lock``, holding the pid and host of the training that owns the folder;
a second training into the folder is refused while that process lives, and a lock left by a
killed run (its pid no longer running on this host) is taken over with a warning. A run that
fails before it saved a checkpoint removes the folders it created, so a typo leaves nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path
from types import TracebackType

from omegaconf import DictConfig

from . import distributed as dist

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
RUN_FILES = ("last.pt", "best.pt", "metrics.csv")


class RunFolderError(RuntimeError):
    """The output folder holds another run, is in use, or cannot be written."""


def _alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (and is not a reaped zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """``run.lock`` in a run folder: taken with O_EXCL, holding ``pid host``; see module doc."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.owner = f"{os.getpid()} {socket.gethostname()}"
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or raise RunFolderError naming the folder and the process holding it."""
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_holder()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.owner + "\n")
            self.held = True
            return
        raise RunFolderError(f"cannot take the lock '{self.path}': another run took it first")

    def _check_holder(self) -> None:
        """Remove a stale lock, or refuse: the holder runs (or cannot be checked from here)."""
        try:
            text = self.path.read_text().split()
            pid, host = int(text[0]), text[1]
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError, IndexError):
            raise RunFolderError(
                f"output folder '{self.path.parent}' has an unreadable lock '{self.path}'; if no "
                f"run uses the folder, delete that file"
            ) from None
        run_dir = self.path.parent
        if host != socket.gethostname():
            raise RunFolderError(
                f"output folder '{run_dir}' is locked by process {pid} on host '{host}' "
                f"('{self.path}'); if that run is gone, delete the lock file"
            )
        if _alive(pid):
            raise RunFolderError(
                f"output folder '{run_dir}' is in use by another training (process {pid} on "
                f"'{host}'); wait for it, stop it, or choose another output.run_dir"
            )
        logger.warning(
            "taking over the stale lock '%s' of process %d, which no longer runs", self.path, pid
        )
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class RunFolder:
    """``with RunFolder(cfg) as run_dir:`` the run folder, created, checked and locked (rank 0).

    Refuses a folder holding a run unless resuming or overwriting (then the old run's files
    go). On exit the lock is released; on a failure before any checkpoint was written, the
    folders this run created are removed again.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.path = Path(cfg.output.run_dir)
        self.resuming = bool(cfg.trainer.resume or cfg.trainer.resume_from)
        self.overwrite = bool(cfg.trainer.overwrite)
        self.lock = RunLock(self.path)
        self.created: Path | None = None  # the outermost folder this run made

    def __enter__(self) -> Path:
        error = None
        if dist.is_main():
            try:
                self._open()
            except RunFolderError as exc:
                error = str(exc)
        error = dist.broadcast_object(error)
        if error:
            raise RunFolderError(error)
        return self.path

    def _open(self) -> None:
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.created = missing[-1] if missing else None
            self.lock.acquire()
        except OSError as exc:
            self._remove_created()
            raise RunFolderError(
                f"output folder '{self.path}' cannot be written ({exc.strerror}); set "
                f"output.run_dir to a writable folder"
            ) from None
        except RunFolderError:
            self._remove_created()
            raise
        held = [p for p in RUN_FILES if (self.path / p).exists()]
        if held and not self.resuming and not self.overwrite:
            self.lock.release()
            raise RunFolderError(
                f"output folder '{self.path}' already holds a run ({', '.join(held)}); continue "
                f"it with trainer.resume=true (--resume), replace it with trainer.overwrite=true, "
                f"or choose another output.run_dir"
            )
        if held and self.overwrite and not self.resuming:
            for name in (*RUN_FILES, "config.yaml"):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / "tb", ignore_errors=True)

    def _remove_created(self) -> None:
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            self.created = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not dist.is_main():
            return
        self.lock.release()
        if exc_type is not None and not any((self.path / p).exists() for p in RUN_FILES):
            self._remove_created()
