"""`luban ensemble`: several finished runs of one task combined into a new run directory. Classification averages
the members' class probabilities (equally, or weighted by each member's validation score); regression averages the
predicted values. The ensemble run dir holds copies of its members, so `luban.load`, `predict`, `evaluate` and
`serve` use it like any other run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import luban.processor as processor
from luban.config import read_yaml, validate
from luban.errors import RunError
from luban.rundir import RunDir, check_finished
from luban.tasks.ensemble import MANIFEST, EnsemblePredictor, member_dirs

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
            from luban.predictor import load

            members = [load(d, "cpu") for d in member_dirs(work)]
            result["test"] = EnsemblePredictor(work, members).evaluate_file(test_file)
            result["test_data"] = str(test_file)
        (work / "metrics.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
        return run.finish(kind="ensemble")
    except BaseException:
        run.discard()
        raise
