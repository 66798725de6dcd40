"""`luban ensemble`: several finished runs of one task combined into a new run directory. Classification averages
the members' class probabilities (equally, or weighted by each member's validation score); regression averages the
predicted values. The ensemble run dir holds copies of its members, so `luban.load`, `predict`, `evaluate` and
`serve` use it like any other run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from luban import processor
from luban.config import read_yaml, validate
from luban.errors import DataError, RunError
from luban.rundir import RunDir, check_finished

MANIFEST = "ensemble.json"


ENSEMBLE_TASKS = {"text_classification", "tabular_classification", "tabular_regression", "image_classification",
                  "audio_classification"}


def create_ensemble(runs: list[str | Path], out: str | Path, weighting: str = "mean", evaluate_on: str | None = None,
                    overwrite: bool = False) -> Path:
    if len(runs) < 2:
        raise RunError("an ensemble needs at least two runs")
    dirs = [check_finished(r) for r in runs]
    metrics = [json.loads((d / "metrics.json").read_text(encoding="utf-8")) for d in dirs]
    tasks = {m["task"] for m in metrics}
    if len(tasks) > 1:
        raise RunError(f"runs of different tasks cannot be ensembled: {', '.join(sorted(tasks))}")
    task = tasks.pop()
    if task not in ENSEMBLE_TASKS:
        raise RunError(f"task {task}: an ensemble averages class probabilities (classification) or values "
                       f"(regression); it covers {', '.join(sorted(ENSEMBLE_TASKS))}")
    labels = [json.dumps(processor.load(d / "model").get("labels")) for d in dirs]
    if len(set(labels)) > 1:
        raise RunError("the runs were trained on different label sets; an ensemble needs the same labels")
    if weighting == "validation":
        main = metrics[0]["main_metric"]
        scores = np.array([m["validation"][main] for m in metrics], dtype=float)
        from luban.config import LOWER_IS_BETTER

        weights = (1.0 / np.maximum(scores, 1e-12)) if main in LOWER_IS_BETTER else scores
        weights = weights / weights.sum()
    else:
        weights = np.full(len(dirs), 1.0 / len(dirs))
    out = Path(out)
    run = RunDir(out.parent, out.name)
    work = run.start(overwrite, resume=False)
    try:
        for i, d in enumerate(dirs):
            member = work / "members" / str(i)
            member.mkdir(parents=True)
            shutil.copy(d / "config.yaml", member / "config.yaml")
            shutil.copy(d / "metrics.json", member / "metrics.json")
            shutil.copytree(d / "model", member / "model")
        shutil.copy(dirs[0] / "config.yaml", work / "config.yaml")
        (work / "model").mkdir()
        manifest = {"task": task, "weighting": weighting, "members": [str(d.resolve()) for d in dirs],
                    "weights": [round(float(w), 6) for w in weights]}
        (work / "model" / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        result = {"task": task, "main_metric": metrics[0]["main_metric"], "ensemble": manifest,
                  "members": [{"run": str(d), "test": {k: v for k, v in m["test"].items() if isinstance(v, float)}}
                              for d, m in zip(dirs, metrics, strict=True)]}
        test_file = evaluate_on or validate(read_yaml(dirs[0] / "config.yaml")).data.test
        if test_file is not None:
            result["test"] = EnsemblePredictor(work, "cpu").evaluate(test_file)
            result["test_data"] = str(test_file)
        (work / "metrics.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
        return run.finish(kind="ensemble")
    except BaseException:
        run.discard()
        raise


class EnsemblePredictor:
    """Looks like a task predictor: predict(inputs) and evaluate(path), combining the members'."""

    def __init__(self, run_dir: Path, device="auto"):
        from luban.predictor import Predictor

        manifest = json.loads((Path(run_dir) / "model" / MANIFEST).read_text(encoding="utf-8"))
        self.members = [Predictor(Path(run_dir) / "members" / str(i), device)
                        for i in range(len(manifest["weights"]))]
        self.weights = manifest["weights"]
        self.task = manifest["task"]
        self.cfg = self.members[0].config

    def read_inputs(self, path):
        return self.members[0]._impl.read_inputs(path)

    def __getattr__(self, name):  # row-aligned file prediction reads inputs as the members do
        if name in ("frame_inputs", "input_problem", "media_suffixes") and "members" in self.__dict__:
            return getattr(self.members[0]._impl, name)
        raise AttributeError(name)

    def predict(self, inputs, top_k: int | None = None, **_):
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

    def evaluate(self, path) -> dict:
        from luban.data.readers import resolve_column
        from luban.evaluate.metrics import classification_metrics, regression_metrics
        from luban.tasks.base import read_file

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
