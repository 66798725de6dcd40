"""The run directory: written under `<name>.partial/`, renamed to `<name>/` only when everything is written.

A run that fails on bad input leaves nothing; one interrupted during training keeps `<name>.partial/` with its
checkpoints so `luban train CONFIG --resume` can continue it, and a new run of the same name refuses to start
until the user picks `--resume` or `--restart` (nothing is deleted silently). A finished run always has
`metrics.json` and, written last, `manifest.json` (luban.manifest: run format, task, model, files). With
output.overwrite the old run is renamed to `<name>.replaced/` before the new one takes its
place and deleted after, so a kill mid-swap loses neither (the next start or load completes or undoes the swap).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import luban.manifest as run_manifest
from luban.errors import RunError

PARTIAL = ".partial"
REPLACED = ".replaced"


class RunDir:
    def __init__(self, root: Path, name: str):
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise RunError(f"run name {name!r}: must be a plain folder name (no '/', '\\' or '..')")
        self.final = Path(root) / name
        self.work = Path(root) / (name + PARTIAL)
        self.replaced = Path(root) / (name + REPLACED)  # the old run while finish() swaps in the new one

    def recover(self) -> None:
        """Complete or undo an overwrite swap (see finish) that a kill interrupted: a finished new run (it has
        metrics.json) takes the name, otherwise the old run is put back."""
        if not self.replaced.is_dir():
            return
        if not self.final.exists():
            if (self.work / "metrics.json").is_file():
                os.replace(self.work, self.final)
            else:
                os.replace(self.replaced, self.final)
                return
        shutil.rmtree(self.replaced)

    def check(self, overwrite: bool, resume: bool, restart: bool = False) -> None:
        """Raise the RunError start() would raise, creating nothing (so a pipeline can refuse before reading
        its data); an interrupted overwrite swap or checkpoint commit is recovered first."""
        if resume and restart:
            raise RunError("--resume and --restart exclude each other: resume continues the interrupted run, "
                           "restart discards it")
        self.recover()
        if resume:
            from luban.training.checkpoint import recover

            for kind in ("last", "best"):  # a kill between the two renames of a checkpoint commit
                recover(self.work / "checkpoints" / kind)
            if not (self.work / "checkpoints" / "last").is_dir():
                raise RunError(f"--resume: no interrupted run to resume at {self.work} "
                               "(it needs checkpoints/last from an earlier run of this config)")
            return
        if self.final.exists() and not overwrite:
            raise RunError(f"{self.final} already exists; pick another output.name, or set output.overwrite: true")
        if self.work.exists() and (self.work / "checkpoints").is_dir() and not restart:
            raise RunError(f"{self.work} holds an interrupted run{self._progress()}; continue it with "
                           "`luban train CONFIG --resume` (resume=True in Python), or discard it and start over "
                           "with `--restart` (restart=True)")

    def start(self, overwrite: bool, resume: bool, restart: bool = False) -> Path:
        """The work folder to write into. `resume` continues `<name>.partial/` from its last checkpoint;
        `restart` discards an interrupted run's checkpoints (never done without it)."""
        self.check(overwrite, resume, restart)
        if resume:
            return self.work
        if self.work.exists():
            if not restart:
                print(f"removing {self.work} (an unfinished run with no checkpoint to resume from)", file=sys.stderr)
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        return self.work

    def _progress(self) -> str:
        history = self.work / "history.jsonl"
        epochs = sum(1 for ln in history.read_text(encoding="utf-8").splitlines() if ln.strip()) \
            if history.is_file() else 0
        return f" (checkpoints after {epochs} epoch{'s' * (epochs != 1)})" if epochs else ""

    def finish(self, **manifest) -> Path:
        """Write the run's manifest.json (`manifest`: extra fields for it), then rename the work folder to the
        run's name. An existing run (output.overwrite) is moved aside first and deleted last, so at every moment
        one of the two is complete (recover() tidies up after a kill)."""
        run_manifest.write(self.work, **manifest)
        if self.final.exists():
            if self.replaced.exists():
                shutil.rmtree(self.replaced)
            os.replace(self.final, self.replaced)
            os.replace(self.work, self.final)
            shutil.rmtree(self.replaced)
        else:
            os.replace(self.work, self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def check_finished(path: str | Path) -> Path:
    """`path` as a finished run directory whose format this luban reads (luban.manifest), or a RunError."""
    path = Path(path)
    if path.name and path.with_name(path.name + REPLACED).is_dir():  # an overwrite swap was interrupted
        RunDir(path.parent, path.name).recover()
    if path.name.endswith(PARTIAL) or (not path.exists() and path.with_name(path.name + PARTIAL).exists()):
        raise RunError(f"{path}: this run did not finish; resume it with `luban train CONFIG --resume`")
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    for need in ("config.yaml", "metrics.json", "model"):
        if not (path / need).exists():
            raise RunError(f"{path}: not a finished luban run ({need} is missing)")
    run_manifest.read(path)  # a run of a newer format than this luban reads: one clear error
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
