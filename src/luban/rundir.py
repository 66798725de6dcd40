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
