"""trainer.privacy (issue 21 §3): DP-SGD with Opacus for from-scratch text and tabular models, the epsilon spent in
metrics.json and the report, and the refusals."""

import json

import numpy as np
import pytest

import luban
from luban.errors import ConfigError

from conftest import assert_no_run, tabular_config, text_config, write_csv, zh_sentences

pytest.importorskip("opacus")


def test_text_dp_sgd_learns_and_accounts_epsilon(out_dir, zh_data, capsys):
    cfg = text_config(out_dir, "dp", zh_data["train"], data={"test": str(zh_data["test"])},
                      trainer={"epochs": 3, "lr": 0.02, "batch_size": 32, "privacy": {"epsilon": 8, "delta": 1e-4, "max_grad_norm": 1.0}})
    run = luban.train(cfg)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    p = m["privacy"]
    assert 0 < p["epsilon_spent"] <= 8 * 1.02 and p["noise_multiplier"] > 0 and p["steps"] > 0
    assert p["training_rows"] == m["data"]["splits"]["train"]
    assert m["test"]["accuracy"] >= 0.7
    assert "Differential privacy" in (run / "report.html").read_text(encoding="utf-8")
    assert "privacy: DP-SGD, epsilon" in capsys.readouterr().out
    # a smaller budget means more noise
    cfg2 = json.loads(json.dumps(cfg))
    cfg2["trainer"]["privacy"]["epsilon"] = 1
    cfg2["output"]["name"] = "dp1"
    p1 = json.loads((luban.train(cfg2, quiet=True) / "metrics.json").read_text(encoding="utf-8"))["privacy"]
    assert p1["noise_multiplier"] > p["noise_multiplier"] and p1["epsilon_spent"] <= 1.02


def test_tabular_dp(out_dir, tmp_path):
    rng = np.random.default_rng(0)
    rows = [(float(x), float(z), "pos" if x > 0 else "neg") for x, z in rng.normal(size=(400, 2))]
    train = write_csv(tmp_path / "t.csv", rows, header=("a", "b", "y"))
    cfg = tabular_config(out_dir, "tabdp", "tabular_classification", {"train": str(train), "columns": {"label": "y"}},
                         trainer={"epochs": 5, "privacy": {"epsilon": 3}})
    m = json.loads((luban.train(cfg, quiet=True) / "metrics.json").read_text(encoding="utf-8"))
    assert m["privacy"]["epsilon_spent"] <= 3 * 1.02 and m["test"]["accuracy"] >= 0.8


@pytest.mark.parametrize("privacy, match", [({"epsilon": 0}, r"trainer.privacy.epsilon: must be > 0"),
                                            ({"epsilon": -1}, r"trainer.privacy.epsilon: must be > 0"),
                                            ({"epsilon": 1, "delta": 2}, r"trainer.privacy.delta: must be < 1")])
def test_bad_budget_is_a_config_error(out_dir, zh_data, privacy, match):
    cfg = text_config(out_dir, "bad", zh_data["train"], trainer={"privacy": privacy})
    with pytest.raises(ConfigError, match=match):
        luban.train(cfg, quiet=True)
    assert_no_run(out_dir, "bad")


def test_refusals(out_dir, zh_data):
    cfg = text_config(out_dir, "bad", zh_data["train"], trainer={"privacy": {"epsilon": 3}, "l1": 0.01})
    with pytest.raises(ConfigError, match=r"trainer.privacy: DP-SGD cannot be combined with trainer.l1"):
        luban.train(cfg, quiet=True)
    cfg = text_config(out_dir, "bad", zh_data["train"], trainer={"privacy": {"epsilon": 3}, "epochs": 1})
    cfg["model"] = {"type": "rnn", "cell": "lstm", "embedding_dim": 8, "hidden_size": 8}
    with pytest.raises(ConfigError, match=r"trainer.privacy: DP-SGD \(Opacus\) cannot train this model"):
        luban.train(cfg, quiet=True)
    assert_no_run(out_dir, "bad")
    cfg["model"] = {"type": "ngram_bag", "ngram_range": [1, 1]}  # linear: a bias outside its layers
    with pytest.raises(ConfigError, match=r"cannot train a NgramBag: it keeps parameters outside its layers"):
        luban.train(cfg, quiet=True)
    assert_no_run(out_dir, "bad")


def test_frozen_pretrained_encoder_trains_its_head_privately(out_dir, zh_data, en_data, tiny_bert):
    """DP fine-tuning's usual shape: a frozen public encoder, only the head's per-example gradients clipped and
    noised; an encoder that would be trained is refused."""
    cfg = text_config(out_dir, "dphead", en_data["train"], data={"test": str(en_data["test"])},
                      trainer={"epochs": 2, "lr": 0.05, "batch_size": 32,
                               "privacy": {"epsilon": 8, "delta": 1e-4, "max_grad_norm": 1.0}})
    cfg["preprocessing"] = {"tokenizer": {"type": "pretrained", "max_length": 16}}
    cfg["model"] = {"type": "pretrained", "path": str(tiny_bert), "freeze": True}
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert 0 < m["privacy"]["epsilon_spent"] <= 8 * 1.02 and m["privacy"]["steps"] > 0
    assert m["parameters"]["trainable"] < m["parameters"]["total"] / 10  # the head only
    cfg["model"]["freeze"] = 1
    cfg["output"]["name"] = "bad"
    with pytest.raises(ConfigError, match=r"set model.freeze: true to train only its head privately"):
        luban.train(cfg, quiet=True)
    assert_no_run(out_dir, "bad")
