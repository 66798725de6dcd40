"""`luban tune`: hyperparameter search with Optuna (TPE, random or grid; median pruning on per-epoch validation
metrics), in-process or as Ray Tune trials.

The study lives in SQLite next to the trials (runs/NAME-tune/study.db) or in any SQLAlchemy URL, so an interrupted
search continues with --resume (finished trials are kept; one cut off mid-way is re-queued with its parameters) and
optuna-dashboard can open it. Outputs: trials.csv, best.yaml (a plain config `luban train` accepts), report.html
(trials, parameter importances, optimization history) and optionally the best config retrained on
train + validation.
"""

from __future__ import annotations

import copy
import html
import json
import logging
import math
import os
import time
from pathlib import Path

import yaml

from luban.config import CLASSIFICATION_METRICS, LOWER_IS_BETTER, TASK_METRICS, RunConfig, load_config, validate
from luban.errors import ConfigError
from luban.lifecycle.search_space import apply_params, check_space, config_point, grid, suggest
from luban.training.progress import silent


def _sampler(cfg: RunConfig):
    import optuna

    s = cfg.search
    seed = s.seed if s.seed is not None else cfg.seed
    if s.sampler == "grid":
        return optuna.samplers.GridSampler(grid(s.space), seed=seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(2, len(s.space) + 1)))


def _pruner(cfg: RunConfig):
    import optuna

    if cfg.search.pruner == "none":
        return optuna.pruners.NopPruner()
    if cfg.search.cv_folds:  # steps are folds: compare running means from the second fold on
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    # no pruning in the first third of the epochs: under a decaying schedule a slower learning rate trails early
    # and catches up later, so comparing at epoch 2 would prune for speed, not for the final metric
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, cfg.trainer.epochs // 3))


def _metric(cfg: RunConfig) -> tuple[str, str]:
    from luban.tasks import task_classes

    metric = cfg.search.metric or task_classes(cfg.task)[0](cfg).main_metric
    allowed = TASK_METRICS.get(cfg.task, CLASSIFICATION_METRICS)
    if metric not in allowed:
        raise ConfigError(f"search.metric: unknown validation metric {metric!r} for task {cfg.task}; "
                          f"choose one of {', '.join(allowed)}")
    d = cfg.search.direction
    if d == "auto":
        d = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    return metric, d


def _trial_tree(base: dict, params: dict, out: Path, number: int | str, threads: int | None) -> dict:
    tree = apply_params(base, params)
    name = f"trial-{number:03d}" if isinstance(number, int) else f"trial-{number}"
    tree["output"] = {**tree.get("output", {}), "dir": str(out / "trials"), "name": name,
                      "overwrite": True, "tensorboard": False}
    tree.setdefault("evaluation", {})["baseline"] = False
    tree["tracking"] = {"mlflow": None}
    if threads and not tree.get("trainer", {}).get("num_threads"):
        tree.setdefault("trainer", {})["num_threads"] = threads
    return tree


def _requeue_interrupted(study) -> int:
    """Trials left RUNNING by a killed process are marked failed and queued again with the same parameters."""
    import optuna
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params:  # killed before it sampled anything: nothing to redo
            study.enqueue_trial(t.params, skip_if_exists=False)
    if stale:
        optuna.logging.get_logger("optuna").warning(f"re-queued {len(stale)} interrupted trial(s)")
    return len(stale)


def _start_from_config(study, cfg: RunConfig, base: dict, quiet: bool) -> None:
    """Queue the config's own values as trial 0 (what Ray Tune calls points_to_evaluate): the search starts from
    the configuration the user already trusts, and TPE models the space around it."""
    if not cfg.search.start_from_config or cfg.search.sampler == "grid":  # a grid is walked exhaustively anyway
        return
    point, outside = config_point(base, cfg.search.space)
    if point:
        study.enqueue_trial(point, user_attrs={"start": "config"})
    if outside and not quiet:
        print(f"search starts from the config; outside the space, sampled instead: {', '.join(outside)}")


def tune(config: str | Path, trials: int, jobs: int = 1, timeout: float | None = None, resume: bool = False,
         storage: str | None = None, backend: str = "local", overrides: list[str] | None = None,
         quiet: bool = False) -> Path:
    """Run (or continue) a search; returns the folder with study.db, trials.csv, best.yaml and report.html."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("luban tune needs optuna: pip install 'luban[tune]'") from None
    cfg = load_config(config, overrides)
    if cfg.search is None:
        raise ConfigError(f"{config}: luban tune needs a search: section (search.space: {{path: distribution}})")
    if not cfg.search.space:
        raise ConfigError(f"{config}: search.space is empty: name at least one setting to search, e.g. "
                          "search.space: {trainer.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}")
    base = cfg.model_dump(mode="json")
    check_space(base, cfg.search, str(config))
    metric, direction = _metric(cfg)
    name = cfg.output.name
    out = Path(cfg.output.dir) / f"{name}-tune"
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        existing = optuna.study.get_all_study_names(storage)
    except Exception as e:  # a bad URL, an unreachable server
        raise ConfigError(f"--storage {storage}: cannot open the study storage ({e})") from None
    if name in existing and not resume:
        raise ConfigError(f"a study named {name!r} already exists in {storage}; continue it with --resume, or set "
                          "output.name to start a new one")
    study = optuna.create_study(study_name=name, storage=storage, sampler=_sampler(cfg), pruner=_pruner(cfg),
                                direction=direction, load_if_exists=True)
    study.set_user_attr("metric", metric)
    requeued = _requeue_interrupted(study) if resume else 0
    if not study.trials:
        _start_from_config(study, cfg, base, quiet)
    from optuna.trial import TrialState

    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    remaining = max(0, trials - len(finished))
    if not quiet:
        print(f"tune {name}: {metric} ({direction}), {len(finished)} trial(s) done, {remaining} to run"
              f"{f', {requeued} re-queued' if requeued else ''}; study: {storage}", flush=True)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    t0 = time.perf_counter()
    folds = _folds(cfg, out) if cfg.search.cv_folds else None
    if remaining:
        if backend == "ray":
            if folds:
                raise ConfigError("search.cv_folds runs with the local backend (drop --backend ray)")
            from luban.lifecycle.ray_tune import run_ray_trials

            run_ray_trials(cfg, base, study, storage, metric, direction, remaining, jobs, timeout, out, threads,
                           sampler=_sampler(cfg), trial_tree=_trial_tree, run_attrs=run_attrs)
        else:
            line = _trial_line(metric, remaining, quiet)

            def run(n: int, n_jobs: int) -> None:
                study.optimize(lambda trial: _objective(trial, cfg, base, metric, out, threads, folds),
                               n_trials=n, n_jobs=n_jobs, timeout=timeout, catch=(FloatingPointError,),
                               gc_after_trial=True, callbacks=[line])

            # queued trials (the config's own values, re-queued ones) run first and alone: with n_jobs > 1 two
            # threads can pop the same queued trial from the storage and train it twice into one folder
            queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) if jobs > 1 else 0
            try:
                if queued:
                    run(min(queued, remaining), 1)
                    remaining -= min(queued, remaining)
                if remaining:
                    run(remaining, jobs)
            finally:
                line.close()
    summary = write_outputs(study, cfg, base, metric, out, time.perf_counter() - t0)
    if cfg.search.retrain:
        retrain_best(cfg, out)
    if not quiet:
        print_trials(study, metric, out, summary)
    return out


def _folds(cfg: RunConfig, out: Path) -> list[dict]:
    """The study's folds, written once (same seed, same folds for every trial): training and validation rows
    together, stratified by label for classification."""
    from luban.lifecycle.cv import fold_labels, tabular_pool, write_folds

    pool, test = tabular_pool(cfg, with_validation=True, test_to=out / "folds" / "test.jsonl")
    stratify = "classification" in cfg.task and getattr(cfg.data.columns, "label", None) is not None
    folds = write_folds(pool, cfg.search.cv_folds, cfg.seed, out / "folds", fold_labels(cfg, pool, stratify))
    return [{**f, "test": test} for f in folds]


def _objective(trial, cfg: RunConfig, base: dict, metric: str, out: Path, threads: int | None,
               folds: list[dict] | None = None) -> float:
    import optuna

    from luban.pipeline import train

    params = suggest(trial, cfg.search.space)
    tree = _trial_tree(base, params, out, trial.number, threads)
    if folds:
        return _cv_objective(trial, tree, folds, metric)

    def report(record: dict) -> None:
        value = record.get(f"val_{metric}")
        if isinstance(value, (int, float)):
            trial.report(float(value), int(record["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"val_{metric} {value:.4f} at epoch {record['epoch']}")

    with silent():  # one line per trial (see _trial_line), not one per epoch of every trial
        run = train(validate(tree, f"trial {trial.number}"), quiet=True, on_epoch_end=report, restart=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    for k, v in run_attrs(run, m, metric).items():
        trial.set_user_attr(k, v)
    return float(m["validation"][metric])


def _cv_objective(trial, tree: dict, folds: list[dict], metric: str) -> float:
    """Mean held-out metric over the folds; the running mean is reported after each fold (pruning compares it)."""
    import statistics

    import optuna

    from luban.pipeline import train

    values, tests, runs, name = [], [], [], tree["output"]["name"]
    for k, fold in enumerate(folds):
        t = copy.deepcopy(tree)
        t["data"].update(builtin=None, train=str(fold["train"]), validation=str(fold["held_out"]), format="jsonl",
                         train_limit=None, test=str(fold["test"] or fold["held_out"]))
        t["output"]["name"] = f"{name}-fold{k}"
        with silent():
            run = train(validate(t, f"trial {trial.number}, fold {k}"), quiet=True, restart=True)
        m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        runs.append(str(run))
        values.append(float(m["validation"][metric]))
        if metric in m.get("test", {}):
            tests.append(float(m["test"][metric]))
        trial.report(statistics.fmean(values), k)
        if k + 1 < len(folds) and trial.should_prune():
            raise optuna.TrialPruned(f"mean val_{metric} {statistics.fmean(values):.4f} after {k + 1} folds")
    trial.set_user_attr("run_dir", runs[0])
    trial.set_user_attr("fold_runs", runs)
    maximize = trial.study.direction.name == "MAXIMIZE"
    trial.set_user_attr("best_epoch", _curve_epoch(runs, metric, maximize))
    trial.set_user_attr("validation_rows", sum(f["held_out_rows"] for f in folds))  # each row held out once
    trial.set_user_attr("fold_values", values)
    if tests:
        trial.set_user_attr(f"test_{metric}", statistics.fmean(tests))
    return statistics.fmean(values)


def _curve_epoch(runs: list[str], metric: str, maximize: bool) -> int:
    """The epoch count a retrain on all rows should run: the best epoch of the mean validation curve over the
    folds (each fold's own best epoch is noisy on a flat curve), over the epochs every fold ran."""
    curves = []
    for run in runs:
        rows = [json.loads(line) for line in (Path(run) / "history.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip()]
        curves.append([r[f"val_{metric}"] for r in rows if isinstance(r.get(f"val_{metric}"), (int, float))])
    n = min(len(c) for c in curves)
    mean = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
    pick = max if maximize else min
    return pick(range(n), key=lambda i: mean[i]) + 1


def run_attrs(run: Path, m: dict, metric: str) -> dict:
    """What a trial records about its run: the folder, best epoch, test metric and validation size."""
    attrs = {"run_dir": str(run), "best_epoch": m["best_epoch"]}
    if m.get("data", {}).get("splits", {}).get("validation"):
        attrs["validation_rows"] = int(m["data"]["splits"]["validation"])
    if metric in m.get("test", {}):
        attrs[f"test_{metric}"] = m["test"][metric]
    return attrs


class _trial_line:
    """An Optuna callback printing one line per finished trial: trial i/N, its state, value, parameters, the best
    so far, and the elapsed time and ETA of the "tune" progress stage (a bar of the trials on a terminal). `quiet`:
    the stage still counts the trials (its progress and ETA), the per-trial line is not printed."""

    def __init__(self, metric: str, total: int, quiet: bool = False):
        import threading

        from luban.training.progress import Stage

        self.metric, self.total, self.quiet = metric, total, quiet
        self.lock = threading.Lock()
        self.stage = Stage("tune", total=total, unit="trials")  # a line every 30 s while a trial runs

    def close(self):
        self.stage.close()

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        from luban.training.progress import duration

        metric = self.metric
        value = "" if trial.value is None else f" val_{metric} {trial.value:.4f}"
        where = f" at epoch {max(trial.intermediate_values)}" if trial.state == TrialState.PRUNED and \
            trial.intermediate_values else ""
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        try:
            best = f"; best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:  # nothing complete yet
            best = ""
        with self.lock:
            st = self.stage
            st.advance(best=best.removeprefix("; best ") or None)
            if not self.quiet:
                print(f"trial {trial.number} ({st.done}/{self.total}): {trial.state.name.lower()}{where}{value}  "
                      f"[{params}]{best}  elapsed {duration(st.elapsed)}  ETA {duration(st.eta())}", flush=True)


def best_params(study, cfg: RunConfig) -> dict:
    """The best trial's configuration values (list choices as the lists, not their stored index)."""
    import optuna

    return suggest(optuna.trial.FixedTrial(study.best_trial.params), cfg.search.space)


def best_tree(study, cfg: RunConfig, base: dict) -> dict:
    tree = apply_params(base, best_params(study, cfg))
    tree["output"] = {**tree["output"], "name": f"{cfg.output.name}-best"}
    return tree


def write_outputs(study, cfg: RunConfig, base: dict, metric: str, out: Path, seconds: float) -> dict:
    from optuna.trial import TrialState

    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    df.to_csv(out / "trials.csv", index=False)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"no trial of study {cfg.output.name!r} completed; see {out / 'trials.csv'}")
    tree = best_tree(study, cfg, base)
    (out / "best.yaml").write_text(f"# best of {len(complete)} trials: val {metric} {study.best_value:.6g} "
                                   f"(trial {study.best_trial.number})\n" +
                                   yaml.safe_dump(tree, sort_keys=False, allow_unicode=True), encoding="utf-8")
    summary = {"metric": metric, "direction": study.direction.name.lower(), "best_value": study.best_value,
               "best_trial": study.best_trial.number, "best_params": best_params(study, cfg),
               "best_user_attrs": study.best_trial.user_attrs, "trials": len(study.trials),
               "complete": len(complete), "pruned": sum(t.state == TrialState.PRUNED for t in study.trials),
               **_start_summary(study, complete, metric),
               "seconds": round(seconds, 1), "importances": _importances(study)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    (out / "report.html").write_text(_report(study, summary, cfg), encoding="utf-8")
    return summary


PROPORTIONS = ("accuracy", "exact_match")  # metrics that are a share of validation rows: binomial noise applies


def _start_summary(study, complete: list, metric: str) -> dict:
    """The trial that ran the config's own values: its number and value, and the best trial's gain over it. For a
    proportion (accuracy) the validation set's sampling error sqrt(p(1-p)/n) says whether that gain is news: with 12
    trials on 1,200 rows, a best that is +2 rows ahead of the start is selection noise, not a better config."""
    start = next((t for t in complete if t.user_attrs.get("start") == "config"), None)
    if start is None:
        return {}
    sign = 1 if study.direction.name.lower() == "maximize" else -1
    out = {"start_trial": start.number, "start_value": start.value,
           "start_gain": sign * (study.best_value - start.value)}
    n = start.user_attrs.get("validation_rows")
    if metric in PROPORTIONS and n and 0 <= start.value <= 1:
        se = math.sqrt(max(start.value * (1 - start.value), 1e-12) / n)
        out.update(validation_rows=n, validation_se=se, within_noise=bool(0 < out["start_gain"] < 2 * se))
    return out


def _noise_note(summary: dict) -> str:
    """One sentence when the best trial is ahead of the config by less than twice the validation sampling error
    (nothing when the config itself is the best)."""
    if not summary.get("within_noise"):
        return ""
    return (f"the best trial is {summary['start_gain']:+.4f} ahead of your config, within twice the validation "
            f"set's sampling error (±{summary['validation_se']:.4f} on {summary['validation_rows']} rows): the gain "
            "may not hold on new data — check it (luban cv, more validation rows) before switching")


def _importances(study) -> dict:
    import optuna

    try:
        return {k: round(v, 4) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):  # too few or identical trials
        return {}


def _report(study, summary: dict, cfg: RunConfig) -> str:
    from luban.evaluate.report import CSS, _line_chart

    E = html.escape
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best_so_far, best = [], None
    for t in done:
        better = best is None or (t.value > best if summary["direction"] == "maximize" else t.value < best)
        best = t.value if better else best
        best_so_far.append(best)
    chart = _line_chart(f"validation {summary['metric']} by trial", [t.number for t in done],
                        {"trial": [t.value for t in done], "best so far": best_so_far}, xlabel="trial")
    imp = summary["importances"]
    bars = "".join(f"<tr><td class=l>{E(k)}</td><td class=l><div style='background:#2f6fde;height:12px;"
                   f"width:{300 * v:.0f}px'></div></td><td>{v:.3f}</td></tr>" for k, v in imp.items())
    rows = "".join(
        f"<tr><td>{t.number}</td><td class=l>{t.state.name.lower()}</td>"
        f"<td>{'' if t.value is None else f'{t.value:.4f}'}</td>"
        f"<td class=l>{E(', '.join(f'{k}={v}' for k, v in t.params.items()))}</td>"
        f"<td>{(t.duration.total_seconds() if t.duration else 0):.1f}</td></tr>" for t in study.trials)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>luban tune — {E(cfg.output.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>luban tune <code>{E(cfg.output.name)}</code></h1>"
            f"<p class=muted>{summary['trials']} trials ({summary['complete']} complete, {summary['pruned']} "
            f"pruned) · best val {E(summary['metric'])} {summary['best_value']:.4f} (trial {summary['best_trial']})"
            + (f" · your config (trial {summary['start_trial']}) {summary['start_value']:.4f}"
               if "start_value" in summary else "")
            + " · best config: best.yaml</p>"
            + (f"<p><b>Note:</b> {E(_noise_note(summary))}</p>" if _noise_note(summary) else "")
            + f"<div class=charts>{chart}</div>"
            + (f"<h2>Parameter importances (fANOVA)</h2><table>{bars}</table>" if imp else "")
            + "<h2>Trials</h2><table><tr><th>#</th><th class=l>state</th><th>value</th><th class=l>parameters</th>"
            f"<th>seconds</th></tr>{rows}</table></body></html>")


def print_trials(study, metric: str, out: Path, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"luban tune — {out}")
    for col in ("#", "state", f"val {metric}", "parameters"):
        table.add_column(col)
    for t in study.trials:
        table.add_row(str(t.number), t.state.name.lower(), "" if t.value is None else f"{t.value:.4f}",
                      ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()))
    Console().print(table)
    start = (f" (your config, trial {summary['start_trial']}: {summary['start_value']:.4f})"
             if "start_value" in summary else "")
    print(f"best: trial {study.best_trial.number}, val {metric} {study.best_value:.4f}{start}; "
          f"config: {out / 'best.yaml'}")
    if _noise_note(summary):
        print(f"note: {_noise_note(summary)}")


def retrain_best(cfg: RunConfig, out: Path) -> Path:
    """Train best.yaml on train + validation for the best trial's number of epochs."""
    tree = yaml.safe_load((out / "best.yaml").read_text(encoding="utf-8"))
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    epochs = summary["best_user_attrs"].get("best_epoch") or tree["trainer"]["epochs"]
    return retrain_on_all(tree, int(epochs), f"{cfg.output.name}-best", out, str(out / "best.yaml"))


def concat_tables(first: Path, second: Path, data: dict, dest: Path) -> None:
    """`second`'s rows appended to `first`'s, in their own format (so column indexes, quoting and data.format
    still apply): the text itself for delimited/JSON-lines/text files (a header is kept once), pandas for
    parquet."""
    from luban.data.readers import decode_file, detect_format
    from luban.errors import DataError

    fmt = detect_format(first, data["format"])
    if fmt == "parquet":
        import pandas as pd

        pd.concat([pd.read_parquet(first), pd.read_parquet(second)], ignore_index=True).to_parquet(dest)
        return
    a, b = decode_file(first, data["encoding"]), decode_file(second, data["encoding"])
    if fmt in ("csv", "tsv") and data["header"]:
        head_a, head_b = a.split("\n", 1)[0].strip(), b.split("\n", 1)[0].strip()
        if head_a != head_b:
            raise DataError(f"{second}: line 1: its header ({head_b!r}) differs from {first}'s ({head_a!r}); "
                            "retraining on both needs the same columns in the same order")
        b = b.split("\n", 1)[1] if "\n" in b else ""
    dest.write_text(a + ("" if a.endswith("\n") or not a else "\n") + b, encoding=data["encoding"])


def retrain_on_all(tree: dict, epochs: int, name: str, scratch: Path, source: str) -> Path:
    """The final model of a config: trained on train + validation for `epochs` (the epoch count validation chose),
    without early stopping; the combined table is written to `scratch`. Returns the run directory."""
    from luban.pipeline import train

    tree = copy.deepcopy(tree)
    data = tree["data"]
    if data.get("validation") and Path(data["validation"]).is_file():
        train_path = Path(data["train"])
        combined = Path(scratch) / f"{name}-train+validation{''.join(train_path.suffixes)}"
        concat_tables(train_path, Path(data["validation"]), data, combined)
        data.update(train=str(combined), validation=None)
        data["split"]["validation"] = 0.02  # a sliver stays out only so the pipeline has a validation split
    else:
        logging.getLogger(__name__).warning("validation is carved from train: retraining on the same split")
    tree["trainer"]["epochs"] = max(1, epochs)
    from luban.models.registry import models

    model_type = (tree.get("model") or {}).get("type")
    if model_type in models() and models()[model_type].config.trained_by_library:
        tree["model"]["n_estimators"] = max(1, epochs)  # gbdt: the curve's points are boosting rounds
    tree["trainer"]["keep"] = "last"  # the epoch count is validation's choice; the 2% sliver does not choose again
    tree["trainer"]["early_stopping"] = {"metric": None, "mode": "auto", "patience": None}
    tree["output"]["name"] = name
    tree["output"]["overwrite"] = True
    return train(validate(tree, source), quiet=True, restart=True)
