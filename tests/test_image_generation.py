"""Image generation (DCGAN): training loop, samples, conditional generation, quality metrics, resume, CLI."""

import json
import math
import re

import numpy as np
import pytest
import torch

import luban
from luban.evaluate import generative as gm

from conftest import deep_update


def gan_config(out_dir, name, **extra) -> dict:
    cfg = {
        "task": "image_generation",
        "seed": 5,
        "data": {"builtin": "digits", "train_limit": 400},
        "preprocessing": {"image": {"size": 8}},
        "model": {"type": "dcgan", "latent_dim": 8, "base_channels": 8, "eval_samples": 100,
                  "classifier_epochs": 2},
        "trainer": {"epochs": 2, "batch_size": 32, "lr": 0.001, "scheduler": "constant", "num_threads": 1,
                    "precision": "fp32", "device": "cpu"},
        "evaluation": {"baseline": False},
        "output": {"dir": str(out_dir), "name": name, "tensorboard": False},
    }
    return deep_update(cfg, extra)


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan")
    return luban.train(gan_config(out / "runs", "digits"), quiet=True)


def history(run):
    return [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()]


def test_training_writes_history_samples_and_metrics(gan_run):
    h = history(gan_run)
    assert [r["epoch"] for r in h] == [1, 2]
    for key in ("g_loss", "d_loss", "d_real", "d_fake", "val_mean_confidence", "val_class_entropy_ratio", "val_kid"):
        assert all(math.isfinite(r[key]) for r in h), key
    assert h[0]["g_loss"] != h[1]["g_loss"] and h[0]["d_loss"] != h[1]["d_loss"]  # the losses move
    assert (gan_run / "samples" / "epoch_01.png").is_file() and (gan_run / "samples" / "epoch_02.png").is_file()
    assert not (gan_run / "checkpoints").exists()  # output.keep_checkpoints is off: the weights are in model/
    assert (gan_run / "classifier" / "model.safetensors").is_file()
    m = json.loads((gan_run / "metrics.json").read_text())
    assert m["main_metric"] == "kid"
    for key in ("kid", "mean_confidence", "class_entropy_ratio", "classifier_accuracy"):
        assert math.isfinite(m["test"][key]), key
    assert m["test"]["classifier_accuracy"] > 0.5
    report = (gan_run / "report.html").read_text()
    assert "data:image/png;base64," in report and "Samples" in report


def test_samples_shape_range_and_png(gan_run, tmp_path):
    from PIL import Image

    p = luban.load(gan_run)
    res = p.generate(n=12, seed=1)
    assert res["samples"].shape == (12, 1, 8, 8) and res["arrays"].shape == (12, 8, 8, 1)
    assert res["samples"].min() >= -1 and res["samples"].max() <= 1
    assert len(res["classifier_labels"]) == 12
    again = p.generate(n=12, seed=1)
    assert np.array_equal(res["samples"], again["samples"])  # seeded
    out = p.generate(n=9, seed=0, out=tmp_path / "grid.png")
    assert out["images"] == 9 and out["out"] == str(tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] > 8 * 3
    with pytest.raises(luban.errors.LubanError, match="generate"):
        p.predict(["x"])


def test_conditional_generation_returns_the_label(gan_run):
    p = luban.load(gan_run)
    res = p.generate(n=5, label=3)
    assert res["label"] == "3" and res["samples"].shape == (5, 1, 8, 8)
    assert p.generate(n=5, label="3")["label"] == "3"
    with pytest.raises(luban.errors.LubanError, match="unknown label"):
        p.generate(n=2, label="eleven")


def test_kid_zero_for_identical_larger_for_shifted():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16))
    same = gm.kid(x, x.copy())  # unbiased: not exactly 0 (the diagonal is left out of one term), but ~0
    other = gm.kid(x, rng.normal(size=(300, 16)))  # same distribution, another draw: ~0
    half, shifted = gm.kid(x, x + 0.5), gm.kid(x, x + 1.0)
    assert abs(same) < 0.01 * shifted and abs(other) < 0.01 * shifted
    assert 0.1 < half < shifted  # grows with the shift


def test_confidence_and_entropy_match_hand_computed():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    assert gm.mean_confidence(probs) == pytest.approx((0.9 + 0.7 + 0.6 + 0.8) / 4)
    # predicted classes 0, 1, 0, 2 -> histogram [2, 1, 1] / 4
    q = np.array([0.5, 0.25, 0.25])
    assert gm.class_entropy_ratio(probs) == pytest.approx(-(q * np.log(q)).sum() / np.log(3))
    assert gm.class_entropy_ratio(np.eye(4)) == pytest.approx(1.0)  # every class once
    assert gm.class_entropy_ratio(np.tile([[0.0, 1.0, 0.0]], (5, 1))) == 0.0  # collapsed to one class


def test_resume_matches_uninterrupted(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from luban.training import checkpoint

    out = tmp_path / "runs"
    extra = {"trainer": {"epochs": 2}, "data": {"train_limit": 200}, "model": {"eval_samples": 50,
                                                                               "classifier_epochs": 1}}
    full = luban.train(gan_config(out, "full", **extra), quiet=True)
    cfg = gan_config(out, "cut", **extra)
    original = checkpoint.save_last

    def save_last(folder, model, optimizer, scheduler, scaler, state):
        original(folder, model, optimizer, scheduler, scaler, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(checkpoint, "save_last", save_last)
        with pytest.raises(KeyboardInterrupt):
            luban.train(cfg, quiet=True)
    assert (out / "cut.partial" / "checkpoints" / "last" / "state.pt").is_file()
    resumed = luban.train(cfg, resume=True, quiet=True)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("samples_per_s", "epoch_seconds")} for r in h]  # noqa
    assert strip(history(resumed)) == strip(history(full))
    wa, wb = (load_file(str(r / "model" / "model.safetensors")) for r in (full, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_image_folder_and_generate_images_cli(tmp_path, capsys):
    from PIL import Image

    from luban.cli import main

    rng = np.random.default_rng(0)
    for label, value in (("dark", 40), ("light", 215)):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(24):
            arr = np.clip(rng.normal(value, 20, size=(12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / label / f"{i}.png")
    cfg = gan_config(tmp_path / "runs", "folder", data={"builtin": None, "train": str(tmp_path / "imgs"),
                                                         "train_limit": None},
                     model={"eval_samples": 20, "classifier_epochs": 1}, trainer={"epochs": 1, "batch_size": 8})
    del cfg["data"]["builtin"], cfg["data"]["train_limit"]
    run = luban.train(cfg, quiet=True)
    capsys.readouterr()
    assert main(["generate-images", str(run), "--n", "6", "--label", "light", "--out",
                 str(tmp_path / "g.png")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["images"] == 6 and res["label"] == "light" and res["out"] == str(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "RGB"
    assert luban.load(run).generate(n=2)["samples"].shape == (2, 3, 8, 8)


def test_the_gan_trains_in_the_shared_engine_with_its_settings(tmp_path, capsys, monkeypatch):
    """eval_steps, early stopping, log_every lines, step-level TensorBoard and per-epoch callbacks, as every task."""
    monkeypatch.setenv("LUBAN_PROGRESS", "lines")
    monkeypatch.setenv("LUBAN_LOG_SECONDS", "0")
    cfg = gan_config(tmp_path / "runs", "engine", data={"train_limit": 200},
                     model={"eval_samples": 50, "classifier_epochs": 1},
                     trainer={"epochs": 3, "eval_steps": 3, "log_every": 2, "early_stopping": {"patience": 100}},
                     output={"tensorboard": True})
    seen = []
    run = luban.train(cfg, on_epoch_end=seen.append)
    err = capsys.readouterr().err
    h = history(run)
    per_epoch = [r for r in h if not r.get("partial")]
    assert [r["epoch"] for r in per_epoch] == [1, 2, 3] and [r["epoch"] for r in seen] == [1, 2, 3]
    steps_per_epoch = per_epoch[0]["step"]
    partial = [r for r in h if r.get("partial")]
    assert partial and all(r["step"] % 3 == 0 and r["step"] % steps_per_epoch for r in partial)
    assert all(math.isfinite(r["val_kid"]) for r in h)
    lines = [l for l in err.splitlines() if l.startswith("train: ") and " step " in l]
    logged = [int(l.split(" step ")[1].split()[0]) for l in lines]
    assert logged and all(s % 2 == 0 for s in logged)
    assert re.search(r"^epoch 1: d_loss [\d.]+  g_loss [\d.]+  D\(x\) [\d.]+  D\(G\(z\)\) [\d.]+  conf", err, re.M)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "events")).Reload()
    assert [e.step for e in events.Scalars("step/g_loss")] == logged
