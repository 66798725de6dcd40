"""The run directory: written under `<name>.partial/`, renamed to `<name>/` only when everything is written.

A run that fails on bad input leaves nothing; one interrupted during training keeps `<name>.partial/` with its
checkpoints so `luban train CONFIG --resume` can continue it, and a new run of the same name refuses to start
until the user picks `--resume` or `--restart` (nothing is deleted silently). A finished run always has
`metrics.json`. With output.overwrite the old run is renamed to `<name>.replaced/` before the new one takes its
place and deleted after, so a kill mid-swap loses neither (the next start or load completes or undoes the swap).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

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

    def finish(self) -> Path:
        """Rename the work folder to the run's name. An existing run (output.overwrite) is moved aside first and
        deleted last, so at every moment one of the two is complete (recover() tidies up after a kill)."""
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
    return path
