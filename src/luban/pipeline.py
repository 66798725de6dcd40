"""`luban.train`: config -> data -> model -> evaluated run directory."""

from __future__ import annotations

import copy
import functools
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from luban.config import RunConfig, load_config, render, validate
from luban.errors import ConfigError
from luban.evaluate.report import write_report
from luban.evaluate.slices import task_slices
from luban.prepare import build_model, early_stopping_mode, evaluate, prepare
from luban.rundir import RunDir, RunLock
from luban.training.engine import fit
from luban.training.hardware import resolve_precision, select_device, thread_choice
from luban.training.privacy import PrivateLossStep
from luban.training.progress import stage


def _as_config(config, overrides) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        from luban.config import apply_overrides

        tree = apply_overrides(copy.deepcopy(config), overrides)
        output = tree.get("output") or {}
        if output.get("name") is None:
            tree["output"] = {**output, "name": f"{tree.get('task')}-{time.strftime('%Y%m%d-%H%M%S')}"}
        return validate(tree, "(dict)")
    return load_config(config, overrides)


def _one_writer(train_fn):
    """`train`, holding the lock on its run's output.name (luban.rundir.RunLock): a second run writing the same
    name at the same time is refused with a clear error instead of the two overwriting each other."""
    @functools.wraps(train_fn)
    def locked(config, overrides: list[str] | None = None, *args, **kw):
        if kw.get("data") is not None:  # DataFrames: train writes them out and calls train again, locked there
            return train_fn(config, overrides, *args, **kw)
        cfg = _as_config(config, overrides)
        with RunLock(cfg.output.dir, cfg.output.name):
            return train_fn(cfg, None, *args, **kw)

    return locked


@_one_writer
def train(config, overrides: list[str] | None = None, resume: bool = False, quiet: bool = False,
          on_epoch_end=None, task_hook=None, restart: bool = False, data=None) -> Path:
    """Train from a YAML path (or dict / RunConfig); returns the finished run directory.

    `data`: pandas DataFrames (or paths) instead of the config's data files: `data=df` (split per data.split) or
    `data={"train": df, "validation": df2, "test": df3}` (luban.data.frames). `quiet=True` prints nothing.

    `on_epoch_end(record)` is called with each epoch's history record (e.g. to prune a hyperparameter trial:
    an exception raised there stops the run and discards its directory). `task_hook(task)` runs after the data
    is prepared, before the run directory exists (it may replace task.loss). An interrupted run of the same
    name is continued with `resume=True` or discarded with `restart=True`; without either, training refuses."""
    if data is not None:
        from luban.data.frames import train_on

        return train_on(data, config, overrides, _as_config, train, resume=resume, quiet=quiet,
                        on_epoch_end=on_epoch_end, task_hook=task_hook, restart=restart)
    if quiet:  # nothing on stdout or stderr from this thread: progress, epoch lines, notes, warnings
        from luban.quiet import muted

        with muted():
            return _train(config, overrides, resume, True, on_epoch_end, task_hook, restart)
    return _train(config, overrides, resume, False, on_epoch_end, task_hook, restart)


def _train(config, overrides, resume, quiet, on_epoch_end, task_hook, restart=False) -> Path:
    t_command = time.perf_counter()
    cfg = _as_config(config, overrides)
    if resume:
        from luban.config import read_yaml

        saved = RunDir(cfg.output.dir, cfg.output.name).work / "config.yaml"
        if saved.is_file():  # the interrupted run's resolved config wins, so the result matches
            cfg = validate(read_yaml(saved), str(saved))
    run = RunDir(cfg.output.dir, cfg.output.name)
    run.check(cfg.output.overwrite, resume, restart)  # an existing or interrupted run: refuse before reading data
    t0 = time.perf_counter()
    # every data error surfaces here, before a run dir exists; `task_hook` may replace task.loss (distillation's
    # teacher soft targets, luban.compress.distill)
    task = prepare(cfg, hook=task_hook)
    cfg = task.cfg  # what the task resolved from its model (a pretrained speech model's sample rate) is saved too
    prep_seconds = time.perf_counter() - t0
    setup_seconds = t0 - t_command  # reading the config, importing the task

    work = run.start(cfg.output.overwrite, resume, restart)
    keep_partial = False
    tracker = None
    try:
        if cfg.tracking.mlflow:
            from luban.lifecycle.tracking import MlflowTracker

            tracker = MlflowTracker(cfg)
        callbacks = [c for c in (on_epoch_end, tracker.log_epoch if tracker else None) if c is not None]
        (work / "config.yaml").write_text(render(cfg), encoding="utf-8")
        device = select_device(cfg.trainer.device)
        precision = resolve_precision(cfg.trainer.precision, device, task.prefers_bf16_on_cpu())
        task.device, task.precision = device, precision
        model = build_model(task).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if not quiet:
            print(f"{cfg.task}: {cfg.model.type} model, {n_params:,} parameters ({n_trainable:,} trainable), "
                  f"{device.type} {precision}, {_threads_text()}", flush=True)
        keep_partial = True  # from here an interruption leaves checkpoints to resume from
        t_fit = time.perf_counter()
        setup_seconds += t_fit - t0 - prep_seconds  # the run directory, building the model
        metric, mode = cfg.trainer.early_stopping.metric or task.main_metric, early_stopping_mode(cfg, task)
        step = task.train_step()
        if cfg.trainer.distributed.backend == "ray":
            from luban.training.distributed import ray_fit

            if step is None or not step.distributed:
                raise ConfigError(f"trainer.distributed: task {cfg.task} with model {cfg.model.type} is "
                                  f"{'not trained by the engine' if step is None else 'trained with its own step'}"
                                  "; distributed training is for models trained with one loss and one optimizer")
            result = ray_fit(cfg, model, work=work, resume=resume, metric=metric, mode=mode,
                             precision=precision)
        elif step is None:  # trained by its own library (LightGBM), or computed, not trained (popularity)
            result = task.fit_model(model, work, (lambda record: [c(record) for c in callbacks]) if callbacks
                                    else None)
        else:
            result = fit(model, step, evaluate_fn=lambda m: task.evaluate(m, "validation"), cfg=cfg.trainer,
                         metric=metric, mode=mode, device=device, precision=precision, workdir=work,
                         resume=resume, tensorboard=cfg.output.tensorboard,
                         on_epoch_end=(lambda state: [c(state["history"][-1]) for c in callbacks]) if callbacks
                         else None, on_log=tracker.log_step if tracker else None)
        fit_seconds = time.perf_counter() - t_fit + result.earlier_fit_seconds  # + the sessions before --resume
        keep_partial = False

        from luban.evaluate.significance import compare_to_baseline

        t_eval = time.perf_counter()
        final = evaluate(task, model, precision=precision)
        slices = task_slices(task, final["test"])
        t_base = time.perf_counter()
        baseline = None
        if cfg.evaluation.baseline:
            with stage("baseline"):
                baseline = task.baseline()
        t_save = time.perf_counter()
        model_dir = work / "model"
        model_dir.mkdir(exist_ok=True)
        with stage("saving"):
            task.save_weights(model_dir, model)
            task.save(model_dir, model)
        unit = task.throughput_unit
        metrics = {
            "task": cfg.task, "main_metric": task.main_metric,
            "validation": final["validation"], "test": final["test"], "baseline": baseline,
            "vs_baseline": compare_to_baseline(final["test"], baseline, task.main_metric, cfg.seed),
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
            "data": task.data_summary(),
            "timings": {"setup_seconds": round(setup_seconds, 3), "prepare_seconds": round(prep_seconds, 3),
                        "fit_seconds": round(fit_seconds, 3),
                        "train_seconds": round(result.train_seconds, 3),
                        "evaluation_seconds": round(t_base - t_eval, 3),
                        "baseline_seconds": round(t_save - t_base, 3),
                        f"{unit}_per_second": round(result.samples_per_second, 1), "throughput_unit": unit},
            "environment": {"device": device.type, "precision": precision, "threads": torch.get_num_threads(),
                            **_threads_choice(),
                            "torch": torch.__version__, "python": platform.python_version()},
            "parameters": {"total": n_params, "trainable": n_trainable},
        }
        from luban.evaluate.verdict import run_notes

        metrics["notes"] = run_notes(metrics, result.history, unit=task.history_unit, more=task.more_training,
                                     metric=cfg.trainer.early_stopping.metric)
        if slices is not None:
            metrics["slices"] = slices
        if isinstance(step, PrivateLossStep):  # trainer.privacy: the epsilon spent
            metrics["privacy"] = step.report()
        write_report(work / "report.html", cfg, metrics, result.history, task.report_sections(work, final))
        if not cfg.output.keep_checkpoints:  # the kept weights are in model/; a finished run is not resumed
            shutil.rmtree(work / "checkpoints", ignore_errors=True)
        metrics["timings"]["saving_seconds"] = round(time.perf_counter() - t_save, 3)
        metrics["timings"]["total_seconds"] = round(time.perf_counter() - t_command, 3)
        (work / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=1), encoding="utf-8")
        out = run.finish()
    except (KeyboardInterrupt, SystemExit):
        if tracker:
            tracker.close("KILLED")
        if not keep_partial:  # interrupted during training: keep checkpoints for --resume
            run.discard()
        raise
    except BaseException:
        if tracker:
            tracker.close("FAILED")
        run.discard()
        raise
    if tracker:
        tracker.finish(out, metrics, result.history)
    if not quiet:
        print_summary(out, metrics)
    return out




def print_summary(run_dir: Path, metrics: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    main = metrics["main_metric"]
    table = Table(title=f"{metrics['task']} — {run_dir}")
    table.add_column("model")
    keys = [main] + [k for k in ("f1_macro", "rmse", "mae", "r2") if k != main and k in metrics["test"]]
    for k in keys:
        table.add_column(f"test {k}", justify="right")
    table.add_row("luban model", *[f"{metrics['test'][k]:.4f}" for k in keys])
    if metrics.get("baseline"):
        b = metrics["baseline"]
        table.add_row(f"baseline: {b['name']}", *[f"{b['test'].get(k, float('nan')):.4f}" for k in keys])
    if metrics.get("vs_baseline"):  # beyond noise or not, on the test rows
        table.caption = metrics["vs_baseline"]["summary"]
        table.caption_style, table.caption_justify, table.min_width = "bold", "left", len(table.caption) + 2
    console = Console()
    console.print(table)
    for note in metrics.get("notes") or []:  # the run lost to its baseline, was undertrained, ... (verdict.py)
        console.print(f"[bold yellow]note:[/] {escape(note['text'])}", highlight=False, markup=True)
    if metrics.get("slices"):
        from luban.evaluate.slices import summary_line

        print(summary_line(metrics["slices"]))
    if metrics.get("privacy"):
        p = metrics["privacy"]
        print(f"privacy: DP-SGD, epsilon {p['epsilon_spent']:.3g} spent of {p['epsilon_target']:g} (delta {p['delta']:g})")
    print(f"{closing_line(metrics)}; report: {run_dir / 'report.html'}")


def closing_line(metrics: dict) -> str:
    """Where the command's wall time went: "done in 1m05s (setup 2.1s, prepare 12s, fit 40s (best epoch 3),
    evaluation 2.0s, baseline 8.1s, saving 0.5s)"."""
    from luban.training.progress import duration

    t = metrics["timings"]
    parts = [("setup", "setup_seconds"), ("prepare", "prepare_seconds"), ("fit", "fit_seconds"),
             ("evaluation", "evaluation_seconds"), ("baseline", "baseline_seconds"), ("saving", "saving_seconds")]
    shown = [(name, t[k]) for name, k in parts if k in t]
    total = t.get("total_seconds", sum(v for _, v in shown))
    other = total - sum(t.get(k, 0.0) for _, k in parts)
    text = ", ".join(f"{name} {duration(v)}" + (f" (best epoch {metrics['best_epoch']})" if name == "fit" else "")
                     for name, v in shown)
    if other >= 0.05:
        text += f", other {duration(other)}"
    unit = t.get("throughput_unit", "samples")
    speed = t.get(f"{unit}_per_second")
    return f"done in {duration(total)} ({text})" + (f"; {speed:,.0f} {unit}/s" if speed else "")


def _threads_text() -> str:
    choice = thread_choice()
    return choice.describe() if choice is not None else _count(torch.get_num_threads(), "thread")


def _threads_choice() -> dict:
    """metrics.json's record of how the threads were picked: automatically (from the cores and the load) or set."""
    choice = thread_choice()
    if choice is None:
        return {"threads_from": "set"}
    return {"threads_from": "auto", "cores": choice.cores, "load_avg": choice.load, "cores_busy": choice.busy,
            "cores_in_use_elsewhere": choice.in_use}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
