"""The run directory: written under `<name>.partial/`, renamed to `<name>/` only when everything is written.

A run that fails on bad input leaves nothing; one interrupted during training keeps `<name>.partial/` with its
checkpoints so `luban train CONFIG --resume` can continue it. A finished run always has `metrics.json`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from luban.errors import RunError

PARTIAL = ".partial"


class RunDir:
    def __init__(self, root: Path, name: str):
        self.final = Path(root) / name
        self.work = Path(root) / (name + PARTIAL)

    def start(self, overwrite: bool, resume: bool) -> Path:
        if resume:
            if not (self.work / "checkpoints" / "last").is_dir():
                raise RunError(f"--resume: no interrupted run to resume at {self.work} "
                               "(it needs checkpoints/last from an earlier run of this config)")
            return self.work
        if self.final.exists() and not overwrite:
            raise RunError(f"{self.final} already exists; pick another output.name, or set output.overwrite: true")
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        return self.work

    def finish(self) -> Path:
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.work, self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def check_finished(path: str | Path) -> Path:
    path = Path(path)
    if path.name.endswith(PARTIAL) or (not path.exists() and path.with_name(path.name + PARTIAL).exists()):
        raise RunError(f"{path}: this run did not finish; resume it with `luban train CONFIG --resume`")
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    for need in ("config.yaml", "metrics.json", "model"):
        if not (path / need).exists():
            raise RunError(f"{path}: not a finished luban run ({need} is missing)")
    return path


class RunLock:
    """An exclusive lock on writing run `<name>` under `<root>`: a second process (or thread) training the same
    output.name at the same time is refused with a RunError instead of the two runs overwriting each other's
    files. The lock is the OS's advisory lock on `<root>/.<name>.lock` (fcntl.flock where available), which the OS
    releases when its holder dies, so a killed run never blocks the next one; the file records the holder's pid
    for the message. Where flock is unavailable, the file's pid is checked for a live process instead."""

    def __init__(self, root: Path, name: str):
        self.path = Path(root) / f".{name}.lock"
        self.name = name
        self._fd: int | None = None
        self._made_dir = False

    def acquire(self) -> "RunLock":
        self._made_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not self._try_lock(fd):
                holder = self._holder(fd)
                os.close(fd)
                by = f" by process {holder}" if holder else ""
                raise RunError(f"run {self.name!r} in {self.path.parent} is being written{by} right now; wait for "
                               f"it to finish, or pick another output.name")
            try:  # the holder before us may have removed the file after we opened it: lock the file that is there
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: a waiter that opened it re-checks the inode
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None
        if self._made_dir:  # a run that failed early leaves no empty output.dir behind
            try:
                self.path.parent.rmdir()
            except OSError:
                pass  # not empty: the run (or another) is in it

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def _holder(fd: int) -> int | None:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return int(os.read(fd, 32).decode().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def _try_lock(self, fd: int) -> bool:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): a pid in the file that is still alive holds the lock
            holder = self._holder(fd)
            if holder and holder != os.getpid() and _alive(holder):
                return False
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
