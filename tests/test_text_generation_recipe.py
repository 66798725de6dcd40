"""Text generation's defaults scale with the corpus (luban.models.gpt_config): the from-scratch GPT's recipe fills the
trainer settings a config leaves unset (render shows them), "auto" settings resolve from the data (width from the
vocabulary, optimizer steps from the corpus' size) into the run's config.yaml, explicit values win; and a generation
run that loses to its bigram baseline says why (luban.evaluate.verdict)."""

from __future__ import annotations

import json
import random

import yaml

import luban
from luban.config import render, validate
from luban.evaluate.verdict import run_notes
from luban.models.gpt_config import MAX_PASSES, MAX_TOKENS, MIN_TOKENS, auto_steps, auto_width
from luban.prepare import prepare

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'-\n0123456789"[:65]
HANZI = [chr(0x4E00 + i) for i in range(5000)]


def corpus(tmp_path, chars, n: int, name: str):
    rng = random.Random(0)
    path = tmp_path / f"{name}.txt"
    text = "".join(chars) + "".join(rng.choice(chars) for _ in range(n))  # every character in training text
    path.write_text("\n".join(text[i:i + 60] for i in range(0, len(text), 60)), encoding="utf-8")
    return path


def lm(train, tmp_path, name, **sections) -> dict:
    tree = {"task": "text_generation", "seed": 0, "data": {"train": str(train), "split": {"validation": 0.1,
                                                                                         "test": 0.1}},
            "trainer": {"num_threads": 1, "precision": "fp32"}, "generation": {"sample_tokens": 0},
            "output": {"dir": str(tmp_path / "runs"), "name": name, "tensorboard": False}}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return tree


def test_recipe_fills_unset_trainer_settings_and_explicit_ones_win():
    cfg = validate({"task": "text_generation", "data": {"train": "x.txt"}})
    t = cfg.trainer
    assert (t.lr, t.scheduler, t.warmup_ratio, t.weight_decay, t.batch_size) == (3e-3, "cosine", 0.05, 0.1, 12)
    assert cfg.model.n_embd == "auto" and t.steps_per_epoch == "auto"
    shown = yaml.safe_load(render(cfg))
    assert shown["trainer"]["lr"] == 3e-3 and shown["model"]["n_embd"] == "auto"  # render: what the run will use
    mine = validate({"task": "text_generation", "data": {"train": "x.txt"},
                     "model": {"type": "gpt", "n_embd": 96, "n_head": 4},
                     "trainer": {"lr": 1e-3, "scheduler": "linear", "steps_per_epoch": 7}})
    assert (mine.trainer.lr, mine.trainer.scheduler, mine.trainer.steps_per_epoch, mine.model.n_embd) == \
        (1e-3, "linear", 7, 96)
    assert mine.trainer.warmup_ratio == 0.05  # the settings it leaves unset still come from the recipe
    hf = validate({"task": "text_generation", "data": {"train": "x.txt"},
                   "model": {"type": "pretrained_lm", "path": "some/folder"}})
    assert hf.trainer.lr == 1e-3 and hf.trainer.scheduler == "linear"  # the GPT's recipe is the GPT's alone


def test_auto_rules():
    assert auto_width(65, 4) == 128 and auto_width(5000, 4) == 256 and auto_width(5000, 6) == 252
    assert auto_steps(50_000_000, 10, 12, 64) * 10 * 12 * 64 >= MAX_TOKENS > (auto_steps(50_000_000, 10, 12, 64)
                                                                              - 1) * 10 * 12 * 64
    small = auto_steps(200_000, 10, 12, 64) * 10 * 12 * 64
    assert MIN_TOKENS <= small < MIN_TOKENS + 10 * 12 * 64  # a small corpus is seen several times
    assert auto_steps(1_000, 10, 12, 64) * 10 * 12 * 64 <= MAX_PASSES * 1_000 + 10 * 12 * 64  # a tiny one: bounded


def test_auto_settings_resolve_from_the_vocabulary_and_are_recorded(tmp_path):
    english = corpus(tmp_path, list(ALPHABET), 3000, "en")
    chinese = corpus(tmp_path, HANZI, 3000, "zh")
    small = prepare(validate(lm(english, tmp_path, "en")), quiet=True).cfg
    large = prepare(validate(lm(chinese, tmp_path, "zh")), quiet=True).cfg
    assert small.model.n_embd == 128 and large.model.n_embd == 256
    assert isinstance(small.trainer.steps_per_epoch, int) and isinstance(large.trainer.steps_per_epoch, int)
    assert large.trainer.steps_per_epoch != small.trainer.steps_per_epoch  # a larger corpus: more steps
    set_by_user = prepare(validate(lm(chinese, tmp_path, "zh2", model={"type": "gpt", "n_embd": 32, "n_head": 2},
                                      trainer={"steps_per_epoch": 3})), quiet=True).cfg
    assert set_by_user.model.n_embd == 32 and set_by_user.trainer.steps_per_epoch == 3

    run = luban.train(lm(chinese, tmp_path, "zh_run", model={"type": "gpt", "n_layer": 1, "n_head": 2},
                         trainer={"epochs": 1, "steps_per_epoch": 2, "batch_size": 2}), quiet=True)
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["model"]["n_embd"] == 256  # the run records the number, not "auto"
    auto = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["data"]["auto"]
    assert list(auto) == ["model.n_embd"] and auto["model.n_embd"]["value"] == 256
    assert auto["model.n_embd"]["from"].startswith("5,0")  # 5,000 characters + newline and special tokens
    p = luban.load(run)  # the predictor builds the model from the recorded width
    assert p.generate_text("一", max_new_tokens=3, seed=0)["tokens"] == 3


def history(train, val):
    return [{"epoch": i + 1, "train_loss": t, "val_loss": v} for i, (t, v) in enumerate(zip(train, val))]


def test_a_generation_run_that_loses_to_its_bigram_baseline_says_why():
    base = {"name": "bigram counts (smoothed)", "validation": {"loss": 4.03}, "test": {"loss": 4.05}}
    m = {"main_metric": "loss", "best_epoch": 13, "stopped_early": False, "baseline": base,
         "validation": {"loss": 4.91}, "test": {"loss": 4.93}}
    under = run_notes(m, history([6.0, 5.2, 4.8, 4.6, 4.5, 4.42], [5.6, 5.3, 5.1, 5.0, 4.95, 4.91]),
                      more="trainer.steps_per_epoch or trainer.epochs")
    lost = next(n for n in under if n["kind"] == "lost_to_baseline")
    assert "4.05 (baseline) vs 4.93 (model)" in lost["text"] and "underfits" in lost["text"] and "4.42" in lost["text"]
    assert "raise trainer.steps_per_epoch" in lost["text"] and "trainer.lr" in lost["text"]
    over = run_notes({**m, "best_epoch": 3}, history([5.0, 4.2, 3.6, 3.0, 2.6, 2.2], [4.6, 4.4, 4.3, 4.5, 4.7, 4.9]))
    lost = next(n for n in over if n["kind"] == "lost_to_baseline")
    assert "overfits" in lost["text"] and "dropout" in lost["text"] and "underfits" not in lost["text"]
    won = {**m, "validation": {"loss": 3.9}, "test": {"loss": 3.95}}
    assert not [n for n in run_notes(won, history([4.0, 3.9, 3.8], [4.0, 3.95, 3.9])) if n["kind"] ==
                "lost_to_baseline"]
