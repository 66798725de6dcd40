"""`luban tune --backend ray`: the same search space and Optuna study, with trials run as Ray Tune trials (one
process per trial, spread over a local Ray or a cluster; `--jobs` trials at a time) and Ray's median stopping rule
for pruning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from luban.config import RunConfig, validate
from luban.errors import ConfigError
from luban.lifecycle.search_space import suggest


class _Define:
    """The define-by-run space for Ray's OptunaSearch (a module-level class: Ray pickles its searcher)."""

    def __init__(self, space: dict):
        self.space = space

    def __call__(self, trial) -> None:
        suggest(trial, self.space)


def run_ray_trials(cfg: RunConfig, base: dict, study, storage: str, metric: str, direction: str, n: int,
                   jobs: int, timeout: float | None, out: Path, threads: int | None, *, sampler,
                   trial_tree: Callable[..., dict], run_attrs: Callable[..., dict]) -> None:
    """`luban tune --backend ray`: the trials of `study` as Ray Tune trials. The tuner hands over what it shares
    with its local backend: the Optuna sampler, how a trial's config tree is made, and what a run records."""
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import FIFOScheduler, MedianStoppingRule
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError("luban tune --backend ray needs ray[tune]: pip install 'luban[distributed]'") from None
    from luban.training.distributed import _absolute_paths

    base = _absolute_paths(json.loads(json.dumps(base)))
    out = out.resolve()
    if not ray.is_initialized():
        address = cfg.trainer.distributed.address
        ray.init(address=None if address == "local" else address, include_dashboard=False)
    mode = "max" if direction == "maximize" else "min"
    space = cfg.search.space

    import optuna

    searcher = OptunaSearch(space=_Define(space), metric="value", mode=mode, sampler=sampler,
                            study_name=study.study_name, storage=optuna.storages.RDBStorage(storage))

    study_name = study.study_name

    def trainable(params: dict):
        import optuna

        from luban.pipeline import train
        from luban.training.progress import silent

        chosen = suggest(optuna.trial.FixedTrial(params), space)
        number = f"ray-{tune.get_context().get_trial_id()}"  # Ray's own id; Optuna numbers its trials itself
        tree = trial_tree(base, chosen, out, number, threads or 1)

        def report(record: dict) -> None:
            value = record.get(f"val_{metric}")
            if isinstance(value, (int, float)):
                tune.report({"value": float(value), "epoch": int(record["epoch"])})

        with silent():  # Ray reports the trials; their epochs would interleave from every worker
            run = train(validate(tree, f"trial {number}"), quiet=True, on_epoch_end=report, restart=True)
        m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        _note_run(study_name, storage, params, run_attrs(run, m, metric))
        tune.report({"value": float(m["validation"][metric]), "epoch": m["epochs_run"] + 1})

    scheduler = (MedianStoppingRule(time_attr="epoch", metric="value", mode=mode, grace_period=1,
                                    min_samples_required=2) if cfg.search.pruner == "median" else FIFOScheduler())
    tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": threads or 1}),
                       tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=n,
                                                   max_concurrent_trials=jobs, time_budget_s=timeout),
                       run_config=tune.RunConfig(name="ray", storage_path=str(out / "ray")))
    tuner.fit()


def _note_run(study_name: str, storage: str, params: dict, attrs: dict) -> None:
    """Record the trial's run directory, best epoch and test metric on its Optuna trial, while it is still running
    (Ray's searcher tells Optuna the value once the trainable returns): the trial with these parameters."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=storage)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.params == params and "run_dir" not in t.user_attrs:
            for k, v in attrs.items():
                study._storage.set_trial_user_attr(t._trial_id, k, v)
            return
