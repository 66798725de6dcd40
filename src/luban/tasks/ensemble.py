"""An ensemble run's predictor: its member runs (copied into the run as members/0, members/1, ...) combined.
Classification averages the members' class probabilities (weighted as `luban ensemble` chose: model/ensemble.json);
regression averages the predicted values. `luban ensemble` (luban.lifecycle.ensemble) makes such a run; `luban.load`
builds this predictor over its loaded members."""

from __future__ import annotations

import json
from pathlib import Path

from luban.capabilities import Evaluates, Predicts, TaskPredictor
from luban.errors import DataError, RunError
from luban.tasks.base import read_file

MANIFEST = "ensemble.json"


def member_dirs(run_dir: Path) -> list[Path]:
    """The member run folders of an ensemble run, in order."""
    manifest = json.loads((Path(run_dir) / "model" / MANIFEST).read_text(encoding="utf-8"))
    return [Path(run_dir) / "members" / str(i) for i in range(len(manifest["weights"]))]


class EnsemblePredictor(TaskPredictor, Predicts, Evaluates):
    """A task predictor whose predict(inputs) and evaluate(path) combine its member runs'; input files are read
    as the first member reads them."""

    def __init__(self, run_dir: Path, members: list):
        """`members`: the member runs loaded (luban.load each, from member_dirs(run_dir))."""
        manifest = json.loads((Path(run_dir) / "model" / MANIFEST).read_text(encoding="utf-8"))
        self.members = members
        first = self.members[0]
        super().__init__(first.config, Path(run_dir) / "model", first.device, "ensemble")
        self.weights = manifest["weights"]
        self.task = manifest["task"]
        self.input_kind = first.input_kind  # an ensemble predicts what its members predict
        # row-aligned file prediction reads inputs as the members do
        self.frame_inputs, self.input_problem, self.media_suffixes = (first.frame_inputs, first.input_problem,
                                                                      first.media_suffixes)

    def read_inputs(self, path):
        return self.members[0].read_inputs(path)

    def override_data(self, items: list[str], where: str) -> None:
        for m in self.members:  # each member reads the files as it was trained to, with the same overrides
            m.override_data(items, where)
        self.cfg = self.members[0].config

    def class_labels(self):
        return self.members[0].class_labels()

    def predict_inputs(self, inputs, top_k: int | None = None, **_):
        outs = [m.predict(inputs) for m in self.members]
        combined = []
        for rows in zip(*outs, strict=True):
            if "value" in rows[0]:
                combined.append({"value": round(float(sum(w * r["value"] for w, r in zip(self.weights, rows,
                                                                                          strict=True))), 6)})
                continue
            if "probabilities" not in rows[0]:
                raise RunError(f"task {self.task}: ensembles combine class probabilities or values")
            probs: dict[str, float] = {}
            for w, r in zip(self.weights, rows, strict=True):
                for label, p in r["probabilities"].items():
                    probs[label] = probs.get(label, 0.0) + w * p
            order = sorted(probs, key=lambda k: -probs[k])
            combined.append({"label": order[0], "score": round(probs[order[0]], 6),
                             "probabilities": {k: round(probs[k], 6) for k in order[: top_k or len(order)]}})
        return combined

    def evaluate_file(self, path) -> dict:
        from luban.data.readers import resolve_column
        from luban.evaluate.metrics import classification_metrics, regression_metrics
        frame = read_file(self.cfg, Path(path))
        ref = self.cfg.data.columns.label if self.cfg.data.columns.label is not None else "label"
        truth = frame[resolve_column(frame, ref, "label")].tolist()
        preds = self.predict(self.read_inputs(path))
        if len(preds) != len(truth):
            raise DataError(f"{path}: {len(truth)} labelled rows but {len(preds)} predictions (rows dropped?)")
        if "value" in preds[0]:
            return regression_metrics([float(t) for t in truth], [p["value"] for p in preds])
        labels = sorted(preds[0]["probabilities"], key=str)
        index = {lab: i for i, lab in enumerate(labels)}
        unknown = [t for t in truth if str(t) not in index]
        if unknown:
            raise DataError(f"{path}: label {unknown[0]!r} was not seen in training")
        return classification_metrics([index[str(t)] for t in truth], [index[p["label"]] for p in preds], labels)
