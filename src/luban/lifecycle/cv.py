"""`luban cv`: k-fold cross-validation of a config. The configured training data is split into K folds (stratified
by label when asked); each fold is the test set of one run trained on the rest (its validation carved from those
as the config says). Per-fold and mean ± std of every test metric go to cv.json and report.html."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from luban.config import load_config, validate
from luban.data.readers import LINE, resolve_column
from luban.errors import ConfigError, DataError


def fold_indices(n: int, folds: int, seed: int, labels=None) -> list[np.ndarray]:
    """Test indices of each fold: disjoint, covering 0..n-1; stratified when labels are given."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if folds < 2 or folds > n:
        raise ConfigError(f"--folds {folds}: need 2 <= folds <= {n} rows")
    if labels is not None:
        counts = np.unique(np.asarray(labels), return_counts=True)[1]
        if counts.min() < folds:
            raise DataError(f"--stratified: a label has only {counts.min()} rows, fewer than {folds} folds")
        split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n), labels)
    else:
        split = KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n))
    return [test for _, test in split]


def tabular_pool(cfg, with_validation: bool = False, test_to: Path | None = None):
    """The configured training rows as one frame (plus the validation file's when asked), for splitting into
    folds; a clear error for data that is not a table. `test_to`: also write the test rows there as JSON lines
    (fold files are JSON lines, and one data.format applies to every file of a run); returns (pool, test path)."""
    import pandas as pd

    from luban.tasks.base import read_frames

    frames = read_frames(cfg)  # a built-in dataset fills data.columns here
    frame = frames["train"]
    if not isinstance(frame, pd.DataFrame):
        raise ConfigError(f"task {cfg.task}: folds need tabular data (CSV/TSV/JSONL/Parquet or built-in)")
    if with_validation and isinstance(frames["validation"], pd.DataFrame):
        frame = pd.concat([frame, frames["validation"]], ignore_index=True)
    test = None
    if test_to is not None and isinstance(frames["test"], pd.DataFrame):
        test_to.parent.mkdir(parents=True, exist_ok=True)
        frames["test"].drop(columns=[LINE]).to_json(test_to, orient="records", lines=True, force_ascii=False)
        test = test_to
    return frame, test


def write_folds(frame, folds: int, seed: int, out: Path, labels=None) -> list[dict]:
    """Each fold as JSON-lines files in `out`: {"train": rows outside the fold, "held_out": the fold's rows}."""
    plain = frame.drop(columns=[LINE])
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k, held in enumerate(fold_indices(len(frame), folds, seed, labels)):
        keep = np.ones(len(frame), bool)
        keep[held] = False
        fold = {"train": out / f"fold{k}_train.jsonl", "held_out": out / f"fold{k}_test.jsonl"}
        plain[keep].to_json(fold["train"], orient="records", lines=True, force_ascii=False)
        plain.iloc[held].to_json(fold["held_out"], orient="records", lines=True, force_ascii=False)
        files.append({**fold, "train_rows": int(keep.sum()), "held_out_rows": len(held)})
    return files


def fold_labels(cfg, frame, stratified: bool):
    """Labels to stratify folds by, or None."""
    if not stratified:
        return None
    if getattr(cfg.data.columns, "label", None) is None:  # a task without labels has no such column
        raise ConfigError("--stratified needs data.columns.label")
    return frame[resolve_column(frame, cfg.data.columns.label, "label")].astype(str).to_numpy()


def cross_validate(config: str | Path, folds: int, stratified: bool = False, overrides: list[str] | None = None,
                   quiet: bool = False) -> Path:
    cfg = load_config(config, overrides)
    frame, _ = tabular_pool(cfg)
    labels = fold_labels(cfg, frame, stratified)
    out = Path(cfg.output.dir) / f"{cfg.output.name}-cv"
    base = cfg.model_dump(mode="json")
    from luban.training.progress import duration, stage

    results = []
    with stage("cv", total=folds, unit="folds") as bar:
        for k, fold in enumerate(write_folds(frame, folds, cfg.seed, out, labels)):
            main = _fold(cfg, base, out, k, folds, fold, quiet, results)
            r = results[-1]
            main = main if main in r else next((m for m in r if m not in ("fold", "run", "test_rows")), None)
            bar.advance(**({main: f"{r[main]:.4f}"} if main else {}))
            if not quiet:
                score = f"test {main} {r[main]:.4f}  " if main else ""
                print(f"fold {k + 1}/{folds} done: {score}elapsed {duration(bar.elapsed)}  "
                      f"ETA {duration(bar.eta())}", flush=True)
        seconds = bar.elapsed
    keys = [k for k in results[0] if k not in ("fold", "run", "test_rows")]
    summary = {"folds": folds, "stratified": stratified, "seconds": round(seconds, 1),
               "mean": {k: float(np.mean([r[k] for r in results])) for k in keys},
               "std": {k: float(np.std([r[k] for r in results], ddof=1)) for k in keys}, "per_fold": results}
    (out / "cv.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (out / "report.html").write_text(_report(cfg.output.name, summary, keys), encoding="utf-8")
    if not quiet:
        for k in keys[:6]:
            print(f"{k:>18}: {summary['mean'][k]:.4f} ± {summary['std'][k]:.4f}")
        print(f"per-fold results: {out / 'cv.json'}; report: {out / 'report.html'}")
    return out


def _fold(cfg, base: dict, out: Path, k: int, folds: int, fold: dict, quiet: bool, results: list) -> str:
    """Train fold k; append its test metrics to `results`; returns the run's main metric."""
    from luban.pipeline import train

    tree = json.loads(json.dumps(base))
    tree["data"].update(builtin=None, train=str(fold["train"]), test=str(fold["held_out"]), validation=None,
                        format="jsonl", train_limit=None)
    tree["output"].update(dir=str(out / "folds"), name=f"fold{k}", overwrite=True)
    if not quiet:
        print(f"fold {k + 1}/{folds}: {fold['train_rows']} train rows, {fold['held_out_rows']} test rows",
              flush=True)
    run = train(validate(tree, f"fold {k}"), quiet=True, restart=True)  # a fold cut short is redone
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    results.append({"fold": k, "run": str(run), "test_rows": fold["held_out_rows"],
                    **{k2: v for k2, v in m["test"].items() if isinstance(v, (int, float))}})
    return m["main_metric"]


def _report(name: str, summary: dict, keys: list[str]) -> str:
    from luban.evaluate.report import CSS

    E = html.escape
    head = "".join(f"<th>{E(k)}</th>" for k in keys)
    rows = "".join(f"<tr><td>{r['fold']}</td><td>{r['test_rows']}</td>" +
                   "".join(f"<td>{r[k]:.4f}</td>" for k in keys) + "</tr>" for r in summary["per_fold"])
    mean = "".join(f"<td><b>{summary['mean'][k]:.4f}</b> ± {summary['std'][k]:.4f}</td>" for k in keys)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>luban cv — {E(name)}</title><style>{CSS}"
            f"</style></head><body><h1>{summary['folds']}-fold cross-validation <code>{E(name)}</code></h1>"
            f"<p class=muted>{'stratified, ' if summary['stratified'] else ''}{summary['seconds']} s</p>"
            f"<table><tr><th>fold</th><th>test rows</th>{head}</tr>{rows}<tr><td>mean ± std</td><td></td>{mean}"
            "</tr></table></body></html>")
