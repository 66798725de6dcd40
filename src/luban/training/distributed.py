"""Data-parallel training on Ray Train: each worker prepares the data, wraps the model in DDP (gloo on CPU, nccl on
GPUs) and runs the shared engine on its shard of every batch; rank 0 writes the run directory exactly as a
single-process run does (history, checkpoints, TensorBoard), so --resume and everything after training are the
same. On a multi-node cluster the run directory and the data must be on storage every node sees.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from luban.config import RunConfig, validate
from luban.errors import ConfigError
from luban.training import checkpoint
from luban.training.engine import FitResult

RESULT_KEYS = ("best_epoch", "best_value", "stopped_early", "train_seconds", "epochs_run", "samples_per_second",
               "earlier_fit_seconds")


def _absolute_paths(tree: dict) -> dict:
    """Ray workers do not run in the driver's working directory: make existing relative paths absolute."""
    data = tree["data"]
    for key in ("train", "validation", "test", "image_root"):
        if data.get(key) and Path(data[key]).exists():
            data[key] = str(Path(data[key]).resolve())
    model = tree.get("model") or {}
    if model.get("path") and Path(model["path"]).exists():
        model["path"] = str(Path(model["path"]).resolve())
    return tree


def worker_fit(tree: dict, work: str, resume: bool, metric: str, mode: str, precision: str) -> dict:
    """The per-worker training loop (runs inside a Ray Train worker)."""
    import ray.train
    import ray.train.torch

    from luban.prepare import build_model, prepare
    from luban.training.engine import fit

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = validate(tree, "(distributed worker)")
    task = prepare(cfg, threads=cfg.trainer.distributed.cpus_per_worker)
    device = ray.train.torch.get_device()
    task.device = device
    model = ray.train.torch.prepare_model(build_model(task), move_to_device=True)  # the same weights everywhere
    workdir = Path(work)
    if rank:  # other workers keep their (identical) bookkeeping out of the run directory
        workdir = workdir / f".rank{rank}"
        workdir.mkdir(parents=True, exist_ok=True)
        if resume and (Path(work) / "checkpoints" / "last").is_dir():
            shutil.copytree(Path(work) / "checkpoints" / "last", workdir / "checkpoints" / "last",
                            dirs_exist_ok=True)
    result = fit(model, task.train_step(), evaluate_fn=lambda m: task.evaluate(m, "validation"), cfg=cfg.trainer,
                 metric=metric, mode=mode, device=device, precision=precision, workdir=workdir, resume=resume,
                 tensorboard=cfg.output.tensorboard and rank == 0, rank=rank, world_size=world)
    summary = dataclasses.asdict(result)
    summary = {k: summary[k] for k in RESULT_KEYS}
    if rank:
        shutil.rmtree(workdir, ignore_errors=True)
    else:  # the driver reads this (Ray's own result metrics depend on checkpoint reporting)
        (workdir / "fit_result.json").write_text(json.dumps(summary), encoding="utf-8")
    return summary


def ray_fit(cfg: RunConfig, model: torch.nn.Module, *, work: Path, resume: bool, metric: str, mode: str,
            precision: str) -> FitResult:
    """Train on Ray workers; on return `model` (the driver's copy) holds the best weights."""
    try:
        import ray
        from ray.train import RunConfig as RayRunConfig
        from ray.train import ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError:
        raise ConfigError("trainer.distributed.backend ray needs ray: pip install 'luban[distributed]'") from None
    d = cfg.trainer.distributed
    use_gpu = torch.cuda.is_available() if d.use_gpu is None else d.use_gpu
    if not ray.is_initialized():
        ray.init(address=None if d.address == "local" else d.address, include_dashboard=False,
                 log_to_driver=True, **({"num_cpus": max(d.workers * d.cpus_per_worker, 1)}
                                        if d.address == "local" else {}))
    tree = _absolute_paths(cfg.model_dump(mode="json"))
    args = (tree, str(Path(work).resolve()), resume, metric, mode, precision)

    def loop(_config):
        import ray.train

        from luban.training.distributed import worker_fit

        ray.train.report(worker_fit(*args))

    trainer = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=d.workers, use_gpu=use_gpu,
                                                              resources_per_worker={"CPU": d.cpus_per_worker}),
                           torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                           run_config=RayRunConfig(name="fit", storage_path=str(Path(work).resolve() / "ray")))
    out = trainer.fit()
    if out.error is not None:
        raise out.error
    result_path = Path(work) / "fit_result.json"
    m = json.loads(result_path.read_text(encoding="utf-8"))
    result_path.unlink()
    kept = Path(work) / "checkpoints" / cfg.trainer.keep  # the weights rank 0 ended with: best or last epoch
    if kept.is_dir():
        checkpoint.load_weights(model, kept)
    history_path = Path(work) / "history.jsonl"
    history = [json.loads(x) for x in history_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    shutil.rmtree(Path(work) / "ray", ignore_errors=True)
    return FitResult(history=history, best_epoch=m["best_epoch"], best_value=m["best_value"],
                     stopped_early=m["stopped_early"], train_seconds=m["train_seconds"], epochs_run=m["epochs_run"],
                     samples_per_second=m["samples_per_second"], earlier_fit_seconds=m["earlier_fit_seconds"])
