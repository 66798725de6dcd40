"""What every compression shares: a run's config and model loaded back, its data prepared again (the same splits as
at training), and a NEW run directory written next to it with the metrics re-measured on the same test split."""

from __future__ import annotations

import contextlib
import copy
import html
import io
import json
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from luban.compress import COMPRESSION, HF_DIR, ONNX_DIR, TORCHSCRIPT_DIR
from luban.config import RunConfig, read_yaml, render, updated, validate
from luban.errors import ExportError
from luban.rundir import RunDir, check_finished
from luban.tasks import task_classes
from luban.training.checkpoint import WEIGHTS, has_weights, load_weights

EXPORT_SUBDIRS = (ONNX_DIR, TORCHSCRIPT_DIR, HF_DIR)


def run_config(run_dir: Path) -> RunConfig:
    return validate(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))


def run_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


def prepared_task(cfg: RunConfig, quiet: bool = True):
    """The run's task with its data read, cleaned and split exactly as at training (same config, same seed)."""
    from luban.prepare import prepare

    if not task_classes(cfg.task)[1].exportable:
        raise ExportError(f"export and compression are not supported for task {cfg.task}")
    # export_spec(): a task may refuse one kind of its models (a pretrained speech backbone) before reading data
    task = prepare(cfg, check=lambda task: task.export_spec(), quiet=quiet)
    task.device = torch.device("cpu")
    return task


def torch_model(task, run_dir: Path) -> nn.Module:
    """The run's fp32 PyTorch model, built the way training built it (freezing included), with its weights."""
    fp32_weights(run_dir)
    seed = task.cfg.seed
    torch.manual_seed(seed)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        model = task.build_model()
    load_weights(model, run_dir / "model")
    return model.to(task.device).eval()


def fp32_weights(run_dir: Path) -> None:
    """A clear error unless the run holds fp32 PyTorch weights (what export and compression start from)."""
    from luban.compress.backends import compression_info

    model_dir = run_dir / "model"
    info = compression_info(model_dir)
    if not has_weights(model_dir):
        raise ExportError(f"{run_dir}: this run holds only an ONNX model ({info.get('method', 'exported')}); "
                          "export or compress the fp32 run it was made from")
    if info.get("dtype") == "bfloat16":
        raise ExportError(f"{run_dir}: this run was compressed to bf16; export or compress the fp32 run it was "
                          "made from")


def measure(task, model: nn.Module, splits=("validation", "test")) -> dict:
    """Detailed metrics of `model` (a torch module or a wrapped ONNX session) on the task's splits."""
    from luban.prepare import evaluate

    return evaluate(task, model, splits)


def file_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def weights_bytes(model_dir: Path) -> int:
    """Size on disk of the weights the default backend loads: the ONNX model when the run has one, else
    model.safetensors."""
    from luban.compress.onnx_predictor import has_onnx, onnx_path

    if has_onnx(model_dir):
        p = onnx_path(model_dir)
        return file_bytes(p) + sum(file_bytes(f) for f in p.parent.glob(p.name + ".data"))
    hf = Path(model_dir) / HF_DIR
    if not (Path(model_dir) / WEIGHTS).is_file() and hf.is_dir():  # a Hugging Face causal LM (quantized or not)
        return sum(file_bytes(f) for f in hf.rglob("*.safetensors"))
    return file_bytes(Path(model_dir) / WEIGHTS)


def scalars(m: dict) -> dict:
    return {k: v for k, v in m.items() if isinstance(v, (int, float))}


class DerivedRun:
    """A new run directory made from `source`: written under <name>.partial/ and renamed when complete (discarded
    on any error). The caller writes the compressed model into `model_dir`, then calls finish()."""

    def __init__(self, source: Path, suffix: str, name: str | None = None, overwrite: bool = False):
        self.overwrite = overwrite
        self.source = check_finished(source)
        self.cfg = run_config(self.source)
        self.source_metrics = run_metrics(self.source)
        self.name = name or f"{self.source.name}-{suffix}"
        self.cfg = updated(self.cfg, {"output.name": self.name, "output.dir": self.source.parent})
        self.rundir = RunDir(self.source.parent, self.name)
        self.t0 = time.perf_counter()

    def __enter__(self) -> "DerivedRun":
        self.work = self.rundir.start(self.overwrite, False, restart=True)  # compress has no --resume: redo
        self.model_dir = self.work / "model"
        shutil.copytree(self.source / "model", self.model_dir,
                        ignore=shutil.ignore_patterns(WEIGHTS, COMPRESSION, *EXPORT_SUBDIRS))
        (self.work / "config.yaml").write_text(render(self.cfg), encoding="utf-8")
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.rundir.discard()
        return False

    def finish(self, measured: dict, compression: dict, reference_test: dict, history: list[dict] | None = None,
               parameters: dict | None = None) -> Path:
        from luban.evaluate.report import write_report

        compression = {**compression, "source_run": str(self.source),
                       "source_test": scalars(reference_test),
                       "size_bytes": weights_bytes(self.model_dir),
                       "source_size_bytes": weights_bytes(self.source / "model"),
                       "seconds": round(time.perf_counter() - self.t0, 1)}
        (self.model_dir / COMPRESSION).write_text(json.dumps(compression, indent=1), encoding="utf-8")
        metrics = copy.deepcopy(self.source_metrics)
        metrics.update(validation=measured["validation"], test=measured["test"], compression=compression)
        metrics.pop("vs_baseline", None)  # the source model's verdict, not this one's
        if parameters:
            metrics["parameters"] = {**metrics.get("parameters", {}), **parameters}
        metrics["environment"] = {**metrics.get("environment", {}), "threads": torch.get_num_threads(),
                                  "torch": torch.__version__}
        (self.work / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=1), encoding="utf-8")
        if history is None:
            src_hist = self.source / "history.jsonl"
            if src_hist.is_file():
                shutil.copyfile(src_hist, self.work / "history.jsonl")
            history = [json.loads(l) for l in src_hist.read_text(encoding="utf-8").splitlines()] \
                if src_hist.is_file() else []
        write_report(self.work / "report.html", self.cfg, metrics, history,
                     [compression_section(metrics["main_metric"], compression, measured["test"])])
        return self.rundir.finish(source_run=str(self.source))


def compression_section(main: str, c: dict, test: dict) -> str:
    """The report's "Compression" section: the compressed model beside the model it was made from."""
    E = html.escape
    ref = c.get("source_test", {})
    keys = [k for k in (main, "f1_macro", "rmse", "r2") if k in test and isinstance(test[k], (int, float))]
    keys = list(dict.fromkeys(keys))
    mb = lambda b: f"{b / 2**20:.2f} MB"  # noqa: E731
    head = "<tr><th class=l>model</th><th>size on disk</th>" + "".join(f"<th>test {E(k)}</th>" for k in keys) + "</tr>"
    rows = [f"<tr><td class=l>source: {E(Path(c['source_run']).name)}</td><td>{mb(c['source_size_bytes'])}</td>" +
            "".join(f"<td>{ref.get(k, float('nan')):.4f}</td>" for k in keys) + "</tr>",
            f"<tr><td class=l>compressed ({E(c['method'])})</td><td>{mb(c['size_bytes'])}</td>" +
            "".join(f"<td>{test[k]:.4f}</td>" for k in keys) + "</tr>"]
    details = {k: v for k, v in c.items() if k not in ("source_test", "size_bytes", "source_size_bytes")}
    items = "".join(f"<li><b>{E(k)}</b>: {E(json.dumps(v, ensure_ascii=False))}</li>" for k, v in details.items())
    return (f"<h2>Compression: {E(c['method'])}</h2><p class=muted>Both measured now, on the same test split.</p>"
            f"<table>{head}{''.join(rows)}</table><ul class=muted>{items}</ul>")


def distillation_section(info: dict, test: dict, main: str) -> str:
    """The report's "Distillation" section: the student beside its teacher on the same test split."""
    E = html.escape
    t = info["teacher_test"].get(main, float("nan"))
    return (f"<h2>Distillation</h2><table><tr><th class=l>model</th><th>test {E(main)}</th></tr>"
            f"<tr><td class=l>teacher: {E(Path(info['teacher_run']).name)} ({E(info['teacher_model'])})</td>"
            f"<td>{t:.4f}</td></tr><tr><td class=l>this student</td><td>{test[main]:.4f}</td></tr></table>"
            f"<p class=muted>soft targets at temperature {info['temperature']}, weight alpha {info['alpha']} "
            f"(1 - alpha on the labels)</p>")
