"""`luban tune --backend ray`: the same search space and Optuna study, with trials run as Ray Tune trials (one
process per trial, spread over a local Ray or a cluster; `--jobs` trials at a time) and Ray's median stopping rule
for pruning."""

from __future__ import annotations

import json
from pathlib import Path

from luban.config import RunConfig, validate
from luban.errors import ConfigError
from luban.lifecycle.search_space import suggest


def run_ray_trials(cfg: RunConfig, base: dict, study, storage: str, metric: str, direction: str, n: int,
                   jobs: int, timeout: float | None, out: Path, threads: int | None) -> None:
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import FIFOScheduler, MedianStoppingRule
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError("luban tune --backend ray needs ray[tune]: pip install 'luban[distributed]'") from None
    from luban.lifecycle.tune import _sampler, _trial_tree
    from luban.training.distributed import _absolute_paths

    base = _absolute_paths(json.loads(json.dumps(base)))
    out = out.resolve()
    if not ray.is_initialized():
        address = cfg.trainer.distributed.address
        ray.init(address=None if address == "local" else address, include_dashboard=False)
    mode = "max" if direction == "maximize" else "min"
    space = cfg.search.space

    def define(trial):
        suggest(trial, space)

    searcher = OptunaSearch(space=define, metric="value", mode=mode, sampler=_sampler(cfg),
                            study_name=study.study_name, storage=storage)
    numbering = {"next": len(study.trials)}

    def trainable(params: dict):
        import optuna

        from luban.pipeline import train

        chosen = suggest(optuna.trial.FixedTrial(params), space)
        number = int(tune.get_context().get_trial_id().split("_")[-1]) + numbering["next"]
        tree = _trial_tree(base, chosen, out, number, threads or 1)

        def report(record: dict) -> None:
            value = record.get(f"val_{metric}")
            if isinstance(value, (int, float)):
                tune.report({"value": float(value), "epoch": int(record["epoch"])})

        run = train(validate(tree, f"trial {number}"), quiet=True, on_epoch_end=report)
        m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        tune.report({"value": float(m["validation"][metric]), "epoch": m["epochs_run"] + 1, "run_dir": str(run),
                     "best_epoch": m["best_epoch"]})

    scheduler = (MedianStoppingRule(time_attr="epoch", metric="value", mode=mode, grace_period=1,
                                    min_samples_required=2) if cfg.search.pruner == "median" else FIFOScheduler())
    tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": threads or 1}),
                       tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=n,
                                                   max_concurrent_trials=jobs, time_budget_s=timeout),
                       run_config=tune.RunConfig(name="ray", storage_path=str(out / "ray")))
    results = tuner.fit()
    # Ray's own numbering differs from Optuna's: keep each finished run's directory with its Optuna trial
    by_value = {round(r.metrics.get("value", float("nan")), 12): r.metrics for r in results if r.metrics}
    study_now = type(study)(study_name=study.study_name, storage=storage)
    for t in study_now.trials:
        hit = by_value.get(round(t.value, 12)) if t.value is not None else None
        if hit and "run_dir" in hit and "run_dir" not in t.user_attrs:
            study_now._storage.set_trial_user_attr(t._trial_id, "run_dir", hit["run_dir"])
            study_now._storage.set_trial_user_attr(t._trial_id, "best_epoch", hit.get("best_epoch"))
