"""Torch-free predictors for runs with an ONNX export: onnxruntime + NumPy and the run's saved tokenizer,
vocabulary, labels and preprocessor (luban.compress.onnx_runtime.light_predictor picks them).

Each predicts exactly what its task's own predictor predicts on the same export (same inputs, batches, outputs;
tests/test_onnx_torch_free.py checks it in a fresh process that never imports torch). What is not on the
prediction path (evaluate a labelled file, read a task-specific input file, the model as a module for
distillation) is handed to the task's own predictor, built on first use on the same export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import luban.processor as processor
from luban.capabilities import Evaluates, Predicts, TaskPredictor
from luban.data.cleaning import normalize_inputs, text_problem
from luban.data.images import ImageInputs


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, as torch.softmax computes it."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def ranked(row: list[float], labels: list[str], top_k: int | None) -> dict:
    """{"label", "score", "probabilities"} of one row of class probabilities, classes by decreasing probability."""
    order = sorted(range(len(row)), key=lambda j: -row[j])
    return {"label": labels[order[0]], "score": round(row[order[0]], 6),
            "probabilities": {labels[j]: round(row[j], 6) for j in order[: top_k or len(row)]}}


def read_labels(saved) -> list[str]:
    return list(saved["labels"])


class OnnxPredictor(TaskPredictor, Predicts, Evaluates):
    """What the torch-free predictors share: the session, feeding it by input name, and the task's own predictor
    for everything off the prediction path."""

    task = ""
    exportable = True
    input_kind = "unknown"

    def __init__(self, cfg, folder: Path, session):
        super().__init__(cfg, Path(folder), "cpu", backend="onnx")
        self.session = session
        self.graph_inputs = {i.name for i in session.get_inputs()}
        self.class_names: list[str] | None = None  # the classes in output order, set by a classifier
        self._full = None

    def class_labels(self) -> list[str] | None:
        return self.class_names

    @classmethod
    def runs_without_torch(cls, cfg, folder: Path) -> bool:
        """Whether this run's model and preprocessing can be served without torch."""
        return True

    def run(self, **arrays: np.ndarray) -> np.ndarray:
        """The graph's first output for one batch (inputs the graph dropped are not fed)."""
        feed = {k: np.ascontiguousarray(v) for k, v in arrays.items() if k in self.graph_inputs}
        return self.session.run(None, feed)[0].astype(np.float32, copy=False)

    # off the prediction path: the task's own predictor on the same export (imports torch)
    def full(self):
        if self._full is None:
            from luban.tasks import task_classes
            from luban.training.hardware import select_device, set_threads

            set_threads(self.cfg.trainer.num_threads)
            _, cls = task_classes(self.cfg.task)
            self._full = cls(self.cfg, self.folder, select_device("cpu"), backend="onnx")
        return self._full

    def override_data(self, items: list[str], where: str) -> None:
        super().override_data(items, where)
        if self._full is not None:  # the torch-side predictor built already reads files with the same settings
            self._full.override_data(items, where)

    @property
    def model(self):
        """The export as a torch module (luban.compress.onnx_predictor.OrtModule), for distillation."""
        return self.full().model

    def evaluate_file(self, path):
        return self.full().evaluate_file(path)

    def read_inputs(self, path):
        return self.full().read_inputs(path)

    def parity_rows(self, path):
        return self.full().parity_rows(path)

    def export_spec(self):
        return self.full().export_spec()


# ------------------------------------------------------------------------------------------ text classification
class _FastTokenizer:
    """A Hugging Face fast tokenizer's tokenizer.json run by the `tokenizers` library, encoding as
    `AutoTokenizer(texts, truncation=True, max_length=n)` does (special tokens added), without transformers."""

    def __init__(self, folder: Path, max_length: int):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts))]


class TextClassificationOnnx(OnnxPredictor):
    task = "text_classification"
    input_kind = "text"

    @classmethod
    def runs_without_torch(cls, cfg, folder):
        # a pretrained model's tokenizer runs without transformers (and so without torch) from its tokenizer.json
        return cfg.model.type != "pretrained" or (Path(folder) / "tokenizer" / "tokenizer.json").is_file()

    def __init__(self, cfg, folder, session):
        super().__init__(cfg, folder, session)
        saved = processor.load(self.folder)
        meta = saved["model"]
        self.class_names = read_labels(saved)
        self.pad_id = meta["pad_id"]
        if cfg.model.type == "pretrained":
            max_length = saved["tokenizer"]["config"]["max_length"]
            self.encoder = _FastTokenizer(self.folder / "tokenizer", max_length)
        else:
            from luban.data.ngrams import load_featurizer

            self.encoder = load_featurizer(saved["tokenizer"], self.folder)

    def frame_inputs(self, frame):
        from luban.data.readers import resolve_column

        col = resolve_column(frame, self.cfg.data.columns.text, "text")
        return list(frame[col]), col

    def input_problem(self, x):
        return text_problem(x, self.cfg.data.clean)

    def _features(self, texts: list[str]):
        """Per text: ids, and the weight of each id (n-gram bags) or None (a 0/1 mask is made from the ids)."""
        if hasattr(self.encoder, "encode_weighted"):
            return self.encoder.encode_weighted(texts)
        return self.encoder.encode(texts), None

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, in the batches the task's predictor makes (length-sorted, little padding)."""
        from luban.data.batching import inference_batches

        ids, weights = self._features(texts)
        tr = self.cfg.trainer
        out = np.empty((len(ids), len(self.class_names)), dtype=np.float32)
        for idx in inference_batches([len(s) for s in ids], tr.eval_batch_size or tr.batch_size * 2):
            width = max(len(ids[i]) for i in idx)
            batch = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.float32 if weights is not None else np.int64)
            for row, i in enumerate(idx):
                batch[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = weights[i] if weights is not None else 1
            out[idx] = self.run(ids=batch, mask=mask)
        return softmax(out)

    def predict_inputs(self, inputs, top_k: int | None = None) -> list[dict]:
        texts = normalize_inputs(inputs, self.cfg.data.clean)
        if not texts:
            return []
        return [ranked(row, self.class_names, top_k) for row in self.probabilities(texts).tolist()]


# ------------------------------------------------------------------------------------------------------- tabular
class TabularOnnx(OnnxPredictor):
    input_kind = "json"

    def __init__(self, cfg, folder, session):
        from luban.data.tabular import TabularPreprocessor

        super().__init__(cfg, folder, session)
        self.task = cfg.task
        self.regression = cfg.task == "tabular_regression"
        saved = processor.load(self.folder)
        meta = saved["preprocessing"]
        self.pre = TabularPreprocessor.from_state(meta["preprocessor"])
        self.y_center, self.y_scale = meta["y_center"], meta["y_scale"]
        self.class_names = None if self.regression else read_labels(saved)

    def frame_inputs(self, frame):
        return self.pre.input_frame(frame), None  # a row's bad cell is a DataError from predict, narrowed to the row

    def predict_inputs(self, inputs) -> list[dict]:
        num, cat = self.pre.arrays(self.pre.input_frame(inputs))
        bs = 1024  # as the task's predictor batches
        out = np.concatenate([self.run(numeric=num[i:i + bs], categorical=cat[i:i + bs])
                              for i in range(0, len(num), bs)]) if len(num) else np.empty((0, 1), np.float32)
        if self.regression:
            return [{"value": round(float(v), 6)} for v in (out[:, 0] * self.y_scale + self.y_center).tolist()]
        labels = self.class_names
        return [{"label": labels[int(np.argmax(r))], "score": round(max(r), 6),
                 "probabilities": {labels[j]: round(p, 6) for j, p in enumerate(r)}} for r in softmax(out).tolist()]


# ------------------------------------------------------------------------------------------ image classification
class ImageClassificationOnnx(ImageInputs, OnnxPredictor):
    task = "image_classification"
    input_kind = "image"

    def __init__(self, cfg, folder, session):
        super().__init__(cfg, folder, session)
        saved = processor.load(self.folder)
        self.meta = saved["image"]
        self.class_names = read_labels(saved)
        c = self.meta["in_channels"]
        mean, std = np.asarray(self.meta["mean"], np.float32), np.asarray(self.meta["std"], np.float32)
        if mean.size != c:  # e.g. grayscale images into a 3-channel backbone
            mean, std = np.repeat(mean.mean(), c), np.repeat(std.mean(), c)
        self.mean, self.std = mean.reshape(1, c, 1, 1), std.reshape(1, c, 1, 1)

    def read_inputs(self, path):
        """A folder of images or one image file (a listing file streams through frame_inputs)."""
        from luban.data.images import list_images

        p = Path(path)
        if p.is_dir() or p.suffix.lower() in self.media_suffixes:
            return list_images(p)
        return super().read_inputs(path)

    def pixels(self, u8: np.ndarray) -> np.ndarray:
        """uint8 (B, C, H, W) crops -> the model's normalized float input, as the task's predictor makes it."""
        x = u8.astype(np.float32) / np.float32(255)
        if x.shape[1] != self.mean.shape[1]:
            x = np.broadcast_to(x, (x.shape[0], self.mean.shape[1]) + x.shape[2:])
        return (x - self.mean) / self.std

    def predict_inputs(self, inputs, top_k: int | None = None) -> list[dict]:
        from luban.data.images import load_one

        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        if not inputs:
            return []
        names = [str(v) if isinstance(v, (str, Path)) else f"input {i + 1}" for i, v in enumerate(inputs)]
        working = np.stack([load_one(v, self.meta["mode"], self.meta["resize"], n) for v, n in zip(inputs, names)])
        size = self.meta["size"]
        o = (working.shape[-1] - size) // 2  # the center crop
        crops = working[..., o:o + size, o:o + size]
        tr = self.cfg.trainer
        bs = tr.eval_batch_size or tr.batch_size * 2
        logits = np.concatenate([self.run(pixels=self.pixels(crops[i:i + bs])) for i in range(0, len(crops), bs)])
        return [{"image": name} | ranked(row, self.class_names, top_k)
                for name, row in zip(names, softmax(logits).tolist())]
