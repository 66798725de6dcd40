"""manifest.json: what a finished run directory is, written by one module.

Every finished run holds `manifest.json`: the run-directory format version (FORMAT), the luban version that wrote
it, when, the task, model type and seed of its config.yaml, and its files (relative path and size; a sha256 for
the model files: everything under a `model/` folder, the ensemble members' included). RunDir.finish writes it as
the run's last file, so every command that creates a run dir (train, compress, distill, ensemble) has one; a
command that adds files to a finished run (export, benchmark) refreshes its file list.

Loading reads it first (rundir.check_finished): a run without one was written before run formats existed and
loads as format 0; a run whose format is newer than FORMAT is refused with one clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from luban.errors import RunError
from luban.version import __version__

FILE = "manifest.json"
FORMAT = 1  # the run-directory format this luban writes and the newest it reads
# 0: no manifest.json (luban before run formats): per-task metadata files in model/ (see luban.processor.legacy)
# 1: manifest.json; a task's fitted state is model/processor.json (+ the assets it names)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_files(run: Path) -> list[dict]:
    """Every file of the run but the manifest, sorted: {"path", "bytes"} (+ "sha256" for model files)."""
    run = Path(run)
    out = []
    for root, dirs, names in os.walk(run):
        dirs.sort()
        for name in sorted(names):
            p = Path(root) / name
            rel = p.relative_to(run)
            if rel.as_posix() == FILE or p.is_symlink():
                continue
            row = {"path": rel.as_posix(), "bytes": p.stat().st_size}
            if "model" in rel.parts[:-1]:
                row["sha256"] = _sha256(p)
            out.append(row)
    return out


def _config_fields(run: Path) -> dict:
    import yaml

    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        cfg = None
    cfg = cfg if isinstance(cfg, dict) else {}  # a folder that is no luban run (RunDir used on its own)
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    return {"task": cfg.get("task"), "model_type": model.get("type"), "seed": cfg.get("seed")}


def _write(run: Path, manifest: dict) -> None:
    tmp = run / (FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, run / FILE)


def write(run: str | Path, **extra) -> dict:
    """Write `run`/manifest.json for the run as it now is (`extra`: more fields, e.g. {"kind": "ensemble"})."""
    run = Path(run)
    manifest = {"format": FORMAT, "luban_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **_config_fields(run), **extra, "files": list_files(run)}
    _write(run, manifest)
    return manifest


def refresh(run: str | Path) -> None:
    """After files were added to or changed in a finished run (export, benchmark): its file list again, the rest
    kept. A run of format 0 (no manifest) is left as it is."""
    run = Path(run)
    if (run / FILE).is_file():
        manifest = read(run)
        manifest["files"] = list_files(run)
        _write(run, manifest)


def read(run: str | Path) -> dict:
    """The run's manifest; {"format": 0} for a run written before manifests. A manifest of a newer format than
    this luban reads, or one that is not a JSON object, is a RunError."""
    run = Path(run)
    path = run / FILE
    if not path.is_file():
        return {"format": 0}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: unreadable run manifest ({e})") from None
    version = manifest.get("format") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise RunError(f"{path}: not a luban run manifest (no integer \"format\")")
    if version > FORMAT:
        raise RunError(f"{run} was written by luban {manifest.get('luban_version', '?')} with run format {version}; "
                       f"this luban reads up to {FORMAT}: upgrade luban")
    return manifest
