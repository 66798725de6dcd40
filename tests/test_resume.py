"""An interrupted run resumed with --resume ends exactly where an uninterrupted run ends."""

import importlib
import json

import pytest
import torch
from safetensors.torch import load_file

import luban
from luban.errors import RunError

from conftest import assert_no_run, tabular_config, text_config


def checkpoint_module():
    for name in ("luban.training.checkpoint", "luban.train.checkpoint"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("no luban checkpoint module")


def interrupt_after_epoch(monkeypatch, stop_epoch: int):
    """Raise KeyboardInterrupt right after the checkpoint of `stop_epoch` has been written."""
    ckpt = checkpoint_module()
    original = ckpt.save_last

    def save_last(folder, model, optimizer, scheduler, scaler, state):
        original(folder, model, optimizer, scheduler, scaler, state)
        if state["epoch"] == stop_epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_last", save_last)


def weights(run):
    return load_file(str(run / "model" / "model.safetensors"))


def assert_same_run(a, b):
    ma, mb = (json.loads((r / "metrics.json").read_text(encoding="utf-8")) for r in (a, b))
    assert ma["test"] == mb["test"]
    assert ma["validation"] == mb["validation"]
    assert (ma["best_epoch"], ma["epochs_run"]) == (mb["best_epoch"], mb["epochs_run"])
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ha, hb = ([{k: v for k, v in json.loads(l).items() if k not in ("samples_per_s", "epoch_seconds")}
               for l in (r / "history.jsonl").read_text().splitlines()] for r in (a, b))
    assert ha == hb


def test_resume_matches_uninterrupted_text_run(out_dir, zh_data, monkeypatch):
    # dropout > 0 so the restored RNG state matters; cosine schedule so the restored scheduler matters
    extra = dict(trainer={"epochs": 3, "scheduler": "cosine"}, model={"dropout": 0.3})
    full = luban.train(text_config(out_dir, "full", zh_data["train"], **extra), quiet=True)

    cfg = text_config(out_dir, "cut", zh_data["train"], **extra)
    with monkeypatch.context() as mp:
        interrupt_after_epoch(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            luban.train(cfg, quiet=True)
    partial = out_dir / "cut.partial"
    assert (partial / "checkpoints" / "last").is_dir()
    assert not (out_dir / "cut").exists()
    with pytest.raises(RunError, match="did not finish"):
        luban.load(out_dir / "cut")

    resumed = luban.train(cfg, resume=True, quiet=True)
    assert resumed == out_dir / "cut"
    assert not partial.exists()
    assert_same_run(full, resumed)


def test_resume_matches_uninterrupted_tabular_run(out_dir, monkeypatch):
    extra = dict(trainer={"epochs": 4, "scheduler": "linear"}, model={"dropout": 0.2})
    data = {"builtin": "breast_cancer"}
    full = luban.train(tabular_config(out_dir, "full", "tabular_classification", data, **extra), quiet=True)
    cfg = tabular_config(out_dir, "cut", "tabular_classification", data, **extra)
    with monkeypatch.context() as mp:
        interrupt_after_epoch(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            luban.train(cfg, quiet=True)
    resumed = luban.train(cfg, resume=True, quiet=True)
    assert_same_run(full, resumed)


def test_resume_uses_the_interrupted_runs_config(out_dir, zh_data, monkeypatch):
    cfg = text_config(out_dir, "cfg", zh_data["train"], trainer={"epochs": 2})
    with monkeypatch.context() as mp:
        interrupt_after_epoch(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            luban.train(cfg, quiet=True)
    run = luban.train(cfg, ["trainer.epochs=5"], resume=True, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["epochs_run"] == 2  # the saved config wins, so the result matches the interrupted run's plan


def test_resume_without_partial_run_is_a_clear_error(out_dir, zh_data):
    cfg = text_config(out_dir, "none", zh_data["train"])
    with pytest.raises(RunError, match="no interrupted run to resume"):
        luban.train(cfg, resume=True, quiet=True)
    assert_no_run(out_dir, "none")


def test_cli_interrupt_exits_130_and_keeps_partial(tmp_path, out_dir, zh_data, monkeypatch, capsys):
    import yaml

    from luban.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(text_config(out_dir, "cli", zh_data["train"], trainer={"epochs": 2})),
                    encoding="utf-8")
    with monkeypatch.context() as mp:
        interrupt_after_epoch(mp, 1)
        assert main(["train", str(path)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert (out_dir / "cli.partial" / "checkpoints" / "last").is_dir()
    assert main(["train", str(path), "--resume"]) == 0
    assert (out_dir / "cli" / "metrics.json").is_file()
    assert not (out_dir / "cli.partial").exists()
