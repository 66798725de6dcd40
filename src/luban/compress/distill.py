"""`luban compress STUDENT --distill-from TEACHER_RUN` -> a new run: the student trained on the teacher's soft
targets plus the labels (Hinton et al. 2015), for classification tasks.

STUDENT is a finished run (its config is the student's: e.g. a TextCNN or a 2-layer Transformer trained from
scratch, the natural thing to compare with) or a YAML config. Its data section is replaced by the teacher's, so
both see the same rows and are measured on the same test split. The teacher scores every training row once (its
ONNX export when it has one); the student's loss is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross_entropy(student, label)

With `transfer_data` (text classification), unlabeled texts from a file are scored by the teacher and added to the
student's training split with the soft-target loss only (Tang et al. 2019, "Distilling task-specific knowledge from
BERT into simple neural networks"): the student sees more of the language than the labelled rows hold.
Everything else (epochs, optimizer, early stopping, report) is `luban train`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from luban.errors import ExportError, RunError

UNLABELED = -100  # the label id of transfer-set rows


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, labels), batch means."""
    t = float(temperature)
    student = student.float()
    soft = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher.float() / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)
    labelled = labels != UNLABELED  # transfer-set rows have no label: soft targets only
    hard = F.cross_entropy(student[labelled], labels[labelled]) if bool(labelled.any()) else student.sum() * 0
    return alpha * soft + (1 - alpha) * hard


def student_config(student, teacher_cfg, teacher_run: Path, name: str | None, overrides: list[str] | None):
    """The student's config: its own model/tokenizer/trainer, the teacher's data (same rows, same splits)."""
    from luban.config import apply_overrides, read_yaml, validate
    from luban.rundir import check_finished

    path = Path(student)
    if path.is_dir():
        tree = read_yaml(check_finished(path) / "config.yaml")
        default_name, out_dir = path.name, path.parent
    else:
        tree = read_yaml(path)
        default_name, out_dir = path.stem, teacher_run.parent
    tree = apply_overrides(tree, overrides)
    teacher = teacher_cfg.model_dump(mode="json")
    if tree.get("task", teacher["task"]) != teacher["task"]:
        raise ExportError(f"{student}: the student's task {tree['task']} differs from the teacher's "
                          f"({teacher['task']})")
    tree["task"] = teacher["task"]
    tree["data"] = teacher["data"]
    split = teacher["data"]["split"]
    split["seed"] = split["seed"] if split["seed"] is not None else teacher["seed"]  # the teacher's split
    tree["output"] = {**(tree.get("output") or {}), "dir": str(out_dir), "name": name or f"{default_name}-distilled"}
    return validate(tree, f"{student} (student)")


def distill_run(student, teacher_run, temperature: float = 2.0, alpha: float = 0.5, name: str | None = None,
                overrides: list[str] | None = None, overwrite: bool = False, transfer_data=None,
                quiet: bool = False) -> Path:
    import luban.manifest as manifest
    from luban.compress import COMPRESSION
    from luban.compress.runs import prepared_task, run_config, run_metrics, scalars
    from luban.config import updated
    from luban.pipeline import train
    from luban.predictor import load
    from luban.rundir import RunDir, check_finished

    if temperature <= 0:
        raise ExportError(f"--temperature must be > 0 (got {temperature})")
    if not 0 <= alpha <= 1:
        raise ExportError(f"--alpha must be in [0, 1] (got {alpha})")
    teacher = check_finished(teacher_run)
    tcfg, tmetrics = run_config(teacher), run_metrics(teacher)
    if not tmetrics.get("data", {}).get("labels"):
        raise ExportError(f"{teacher}: distillation is for classification tasks (task {tcfg.task} has no labels)")
    scfg = student_config(student, tcfg, teacher, name, overrides)
    if overwrite:
        scfg = updated(scfg, {"output.overwrite": True})
    if RunDir(scfg.output.dir, scfg.output.name).final.exists() and not scfg.output.overwrite:
        raise RunError(f"{Path(scfg.output.dir) / scfg.output.name} already exists; pass --name or --overwrite")
    teacher_task = prepared_task(tcfg)
    tpred = load(teacher)
    tsplits = teacher_task.data_summary()
    transfer = []
    if transfer_data is not None:
        from luban.tasks.base import TakesUnlabeled

        if not isinstance(teacher_task, TakesUnlabeled):
            raise ExportError(f"--transfer-data is supported for text classification (not task {tcfg.task})")
        transfer = list(tpred.read_inputs(transfer_data))
        teacher_task.add_unlabeled(transfer)
        scfg = updated(scfg, {"evaluation.baseline": False})  # the classical baseline cannot train on unlabeled rows
    with torch.no_grad():
        soft = teacher_task.split_logits(tpred.model, "train")
    info = {"method": "distill", "teacher_run": str(teacher), "teacher_backend": tpred.backend,
            "temperature": temperature, "alpha": alpha, "teacher_model": tcfg.model.type,
            "teacher_test": scalars(tmetrics["test"]),
            "transfer_data": str(transfer_data) if transfer_data is not None else None,
            "transfer_rows": len(soft) - tsplits["splits"]["train"]}

    def hook(task):
        mine = task.data_summary()
        if mine.get("splits") != tsplits.get("splits") or mine.get("labels") != tsplits.get("labels"):
            raise ExportError(f"student and teacher data differ (splits {mine.get('splits')} vs "
                              f"{tsplits.get('splits')}); the student must read the teacher's data")
        if transfer:
            task.add_unlabeled(transfer)

        def loss(model, batch):
            s = task.batch_logits(model, batch)
            t = soft[batch["index"]].to(s.device)
            return distillation_loss(s, t, task.batch_labels(batch), temperature, alpha)

        save, sections = task.save, task.report_sections

        def save_with_info(folder, model):
            save(folder, model)
            (Path(folder) / COMPRESSION).write_text(json.dumps(info, indent=1), encoding="utf-8")

        def report(workdir, final):
            from luban.compress.runs import distillation_section

            return sections(workdir, final) + [distillation_section(info, final["test"], task.main_metric)]

        task.loss, task.save, task.report_sections = loss, save_with_info, report

    out = train(scfg, task_hook=hook, quiet=quiet, restart=True)  # an interrupted distillation starts over
    path = out / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["compression"] = info
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    manifest.refresh(out)  # metrics.json changed after the run finished
    if not quiet:
        main = metrics["main_metric"]
        print(f"distilled {scfg.model.type} student from {teacher} (T={temperature}, alpha={alpha}): test {main} "
              f"{metrics['test'][main]:.4f} (teacher {tmetrics['test'][main]:.4f})")
    return out
