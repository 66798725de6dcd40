"""What every task shares: reading the configured data, label maps, batching, running a model over a split.

A task file subclasses `Task` (training side) and `TaskPredictor` (inference side, built from a run directory, with
the capabilities it implements: luban.capabilities). The pipeline, CLI and predictor never branch on task names;
they ask the task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import pandas as pd
import torch
from torch import nn

from luban.config import RunConfig
from luban.data.builtin import get_builtin
from luban.data.readers import LINE, read_table, resolve_column
from luban.errors import DataError, ExportError
from luban.processor import Processor
from luban.training.step import Batches, LossStep, TrainStep


def read_file(cfg: RunConfig, path: Path) -> pd.DataFrame:
    d = cfg.data
    if Path(path).is_dir():  # a folder of images, one sub-folder per class
        from luban.data.images import list_image_folder

        return list_image_folder(path)
    return read_table(path, d.format, d.header, d.delimiter, d.quoting, d.encoding_for(path))


def read_frames(cfg: RunConfig) -> dict[str, pd.DataFrame | None]:
    """The raw train/validation/test frames the config names (validation/test may be None = split later)."""
    d = cfg.data
    if d.builtin is not None:
        # its columns are in the config already: validation fills the ones a built-in dataset names
        frames = {"train": get_builtin(d.builtin).load(), "validation": None, "test": None}
    else:
        frames = {split: (read_file(cfg, getattr(d, split)) if getattr(d, split) is not None else None)
                  for split in ("train", "validation", "test")}
    if d.train_limit is not None and d.train_limit < len(frames["train"]):
        train = frames["train"]
        attrs = train.attrs
        if d.train is not None and Path(d.train).is_dir():
            # a folder listing is ordered by class: take a seeded sample, not the first N (one class)
            train = train.sample(n=d.train_limit, random_state=cfg.seed).sort_values(LINE)
        else:
            train = train.iloc[: d.train_limit]
        frames["train"] = train.reset_index(drop=True)
        frames["train"].attrs = attrs
    return frames


def split_labelled(cfg: RunConfig, frames: dict) -> dict[str, pd.DataFrame]:
    """Train/validation/test for a labelled (`label` column) classification task: given splits, or seeded and
    stratified ones carved out of train; the training split must keep at least two classes."""
    from luban.data.splits import make_splits

    sp = cfg.data.split
    splits = make_splits(frames, sp.validation, sp.test, sp.seed if sp.seed is not None else cfg.seed,
                         "label" if sp.stratify else None)
    if len(set(splits["train"]["label"])) < 2:
        raise DataError("the training split has a single class after splitting; add data or lower "
                        "data.split fractions")
    return splits


def _label_key(v: str):
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


class LabelMap(Processor):
    """Class names <-> ids (sorted as numbers where they are numbers); its state is the list of names."""

    def __init__(self, labels: list[str]):
        self.labels = list(labels)
        self.index = {l: i for i, l in enumerate(self.labels)}

    @classmethod
    def fit(cls, train: pd.DataFrame, column: str) -> "LabelMap":
        labels = sorted(set(train["label"]), key=_label_key)
        if len(labels) < 2:
            raise DataError(f"{train.attrs.get('source', 'train')}: field {column!r}: the training set has a "
                            f"single class ({labels[0] if labels else 'none'}); classification needs at least two")
        return cls(labels)

    def encode(self, frame: pd.DataFrame, column: str) -> list[int]:
        unknown = ~frame["label"].isin(self.index)
        if unknown.any():
            row = frame[unknown].iloc[0]
            raise DataError(f"{frame.attrs.get('source', 'data')}: line {row[LINE]}: field {column!r}: label "
                            f"{row['label']!r} was not seen in training (known: {', '.join(self.labels[:20])})")
        return [self.index[v] for v in frame["label"]]

    def state(self) -> list[str]:
        return self.labels

    @classmethod
    def from_state(cls, state: list[str], folder: Path | None = None, name: str = "labels") -> "LabelMap":
        return cls(state)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def run_model(model: nn.Module, batches: Batches, forward: Callable[[nn.Module, dict], torch.Tensor],
              n: int) -> torch.Tensor:
    """Outputs for every row, in the original row order (batches may be length-sorted); a progress bar (log
    lines off a terminal) when it runs for more than a second."""
    from luban.training.progress import track

    model.eval()
    out = None
    for batch in track(batches, f"inference ({n} rows)", unit="batches", delay=1.0):
        y = forward(model, batch).float().cpu()
        if out is None:
            out = torch.empty((n,) + tuple(y.shape[1:]), dtype=torch.float32)
        out[batch["index"]] = y
    return out if out is not None else torch.empty((0,))


def logits_loss(logits: torch.Tensor, labels, label_smoothing: float = 0.0) -> float | None:
    """The cross-entropy of a split's logits already computed for its metrics (rows labelled -100 left out): the
    validation loss without a second forward pass over the split. None when no row has a label."""
    import torch.nn.functional as F

    if labels is None:
        return None
    y = torch.as_tensor(labels, dtype=torch.long)
    if logits.shape[0] == 0 or not bool((y != -100).any()):
        return None
    return float(F.cross_entropy(logits.float(), y, ignore_index=-100, label_smoothing=label_smoothing))


def classifier_metrics(logits: torch.Tensor, labels, label_names: list[str], worst: int,
                       example: Callable[[int], dict], detailed: bool = True, label_smoothing: float = 0.0) -> dict:
    """A classifier's metrics on a split from its logits: classification metrics with the `worst` most confidently
    wrong rows (`example(i)` → that row's fields: line, text, ...) and the loss from the same logits (no second
    forward pass for val_loss); scalars only unless `detailed`."""
    from luban.evaluate.metrics import classification_with_worst, scalars

    m = classification_with_worst(torch.softmax(logits, dim=-1).numpy(), labels, label_names, worst, example)
    loss = logits_loss(logits, labels, label_smoothing)
    if loss is not None:
        m["loss"] = loss
    return m if detailed else scalars(m)


def sample_rows(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """Up to `limit` row indexes of a split of n rows: a seeded random sample (all rows when limit is None)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].tolist())


@dataclass
class ExportSpec:
    """How a task's model looks from outside: the tensors forward() takes (in order) and returns, and which of
    their axes vary (batch, sequence length). Exporters and the ONNX runtime backend rely on it."""

    input_names: list[str]
    output_names: list[str] = field(default_factory=lambda: ["output"])
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    outputs_dict: bool = False  # forward() returns {output name: tensor} (traced through OutputTuple)


class OutputTuple(nn.Module):
    """A model whose forward() returns a dict, as one returning a tuple in `names` order (what exporters trace)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *args):
        out = self.model(*args)
        return tuple(out[n] for n in self.names)


class Task:
    """Training side of a task: the contract the pipeline (luban.pipeline, luban.prepare) and the engine
    (luban.training.engine) call, in this order:

        task = TaskCls(cfg)
        task.prepare(task.read_frames())        # read, clean, split, featurize; every data error here
        model = task.build_model()
        step = task.train_step()                # None: computed, not trained
        fit(model, step, evaluate_fn=lambda m: task.evaluate(m, "validation"), ...)
        task.evaluate(model, split, detailed=True); task.baseline(); task.save_weights(...); task.save(...)

    Subclasses set name/main_metric and implement prepare, build_model, train_batches, loss, evaluate, save and
    data_summary; every other method has a default that says what it does when a task does not override it."""

    name = ""
    main_metric = "accuracy"
    mode = "max"
    # what a training batch's "size" counts: throughput is reported as <unit>/s (tokens for language models)
    throughput_unit = "samples"
    # one point of the validation curve, and the setting that trains longer (the run's notes: evaluate/verdict.py)
    history_unit = "epoch"
    more_training = "trainer.epochs"

    # set by the pipeline before build_model(): where the model trains and in which precision
    device: torch.device
    precision: str = "fp32"
    cleaning: list[dict]  # what cleaning dropped or changed, per split (the report's data section)
    slice_source: dict | None = None  # evaluation.slices: the slice columns' values by source line (prepare.py)

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.device = torch.device("cpu")
        self.cleaning = []

    def prefers_bf16_on_cpu(self) -> bool:
        """trainer.precision auto picks bf16 on a CPU that has it (pretrained transformers, large convnets)."""
        return False

    # data ----------------------------------------------------------------------------------------
    def read_frames(self) -> dict[str, pd.DataFrame | None]:
        """The raw splits prepare() takes: the configured data files (a task with its own inputs, e.g.
        annotations or interactions, reads them here)."""
        return read_frames(self.cfg)

    def prepare(self, frames: dict[str, pd.DataFrame | None]) -> None:
        raise NotImplementedError

    def data_summary(self) -> dict:
        raise NotImplementedError

    # model and training --------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def train_batches(self, epoch: int) -> Batches:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def loss_batches(self, split: str):
        """Batches of `split` in the form `loss()` takes (with targets), in a fixed order, for the validation loss
        the engine records each evaluation (history `val_loss`); None when the task's metrics already hold a
        loss or it cannot compute one on held-out rows."""
        return None

    def train_step(self) -> TrainStep | None:
        """What the engine runs on each training batch: by default `loss` on `train_batches(epoch)` with one
        optimizer (luban.training.step.LossStep; history's val_loss is the class's own `loss`, also when a hook
        replaced `self.loss` for training, as distillation does). None: the model is computed, not trained."""
        privacy = getattr(self.cfg.trainer, "privacy", None)
        if privacy is not None:  # DP-SGD (luban.training.privacy)
            from luban.training.privacy import private_step

            return private_step(self, privacy, self.data_summary()["splits"]["train"])
        return LossStep(self.train_batches, self.loss, val_batches=lambda: self.loss_batches("validation"),
                        val_loss=lambda model, batch: type(self).loss(self, model, batch), unit=self.throughput_unit)

    def fit_model(self, model: nn.Module, workdir: Path, on_epoch_end: Callable[[dict], None] | None = None):
        """What the pipeline calls instead of the engine when `train_step()` is None: fit a model that its own
        library trains (the config's `trained_by_library`, e.g. LightGBM's boosting: TabularTask), write
        history.jsonl in `workdir` and return the engine's FitResult (luban.training.engine). By default the model
        is computed, not trained: an empty history."""
        from luban.training.engine import no_training

        return no_training(workdir)

    # evaluation and outputs ----------------------------------------------------------------------
    def evaluate(self, model: nn.Module, split: str, detailed: bool = False) -> dict:
        raise NotImplementedError

    def baseline(self) -> dict | None:
        """A classical model's metrics on the same splits (evaluation.baseline); None: the task has none."""
        return None

    def save(self, folder: Path, model: nn.Module) -> None:
        raise NotImplementedError

    def save_weights(self, folder: Path, model: nn.Module) -> None:
        """The trained weights into the run's model/ folder (safetensors); a task may export its own layout, and a
        model that saves itself in its own library's format (`save_to(folder)`, e.g. LightGBM's text model) does."""
        if callable(getattr(model, "save_to", None)):
            model.save_to(folder)
            return
        from safetensors.torch import save_model

        from luban.training.checkpoint import WEIGHTS

        save_model(model, str(folder / WEIGHTS))

    def split_lines(self, split: str) -> list[int] | None:
        """The source line of each row of `split`, in the order evaluate() scores them (evaluation.slices looks the
        slice columns up by line); None: the task does not slice its test rows."""
        return None

    def report_sections(self, workdir: Path, final: dict) -> list[str]:
        """Extra HTML sections for report.html (image grids, samples); none by default."""
        return []

    # compression hooks (luban.compress): export parity, calibration, pruning fine-tune, distillation. A task whose
    # predictor is `exportable` implements them, plus export_spec() and batch_logits(model, batch) (the model's raw
    # outputs for one training batch), usually on the mixin its Task and Predictor share.
    def export_module(self, model: nn.Module) -> nn.Module:
        """The module to trace: `model`, with dict outputs turned into a tuple in export_spec()'s output order."""
        spec = self.export_spec()
        return OutputTuple(model, spec.output_names) if spec.outputs_dict else model

    def split_inputs(self, split: str, limit: int | None = None, batch_size: int = 32) -> list[tuple]:
        """Batches of model inputs (tuples of tensors, forward()'s arguments) for a sample of a split's rows,
        preprocessed exactly as evaluate() does."""
        raise ExportError(f"export and compression are not supported for task {self.cfg.task}")

    def split_logits(self, model: nn.Module, split: str) -> torch.Tensor:
        """The model's raw outputs (before softmax) for every row of a split, in row order (distillation)."""
        raise ExportError(f"distillation is for classification tasks (not task {self.cfg.task})")

    def batch_labels(self, batch: dict) -> torch.Tensor:
        """The label ids of one training batch (distillation)."""
        raise ExportError(f"distillation is for classification tasks (not task {self.cfg.task})")


@runtime_checkable
class TakesUnlabeled(Protocol):
    """A task whose training split also takes unlabeled rows, trained on soft targets only (distillation's
    transfer set: luban.compress.distill)."""

    def add_unlabeled(self, texts: list[str]) -> int: ...


class TextInputs:
    """Predictor mixin: the input file's rows are texts in the data.columns.<input_role> column, checked and
    normalized as training data was (an empty or whitespace-only text is a row with a problem, not a drop)."""

    input_role = "text"

    def frame_inputs(self, frame: pd.DataFrame):
        col = resolve_column(frame, getattr(self.cfg.data.columns, self.input_role), self.input_role)
        return list(frame[col]), col

    def input_problem(self, x) -> str | None:
        from luban.data.cleaning import text_problem

        return text_problem(x, self.cfg.data.clean)
