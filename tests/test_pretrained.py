"""Fine-tuning a (tiny, locally built) pretrained transformer; freezing; the run dir reloads without the source."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import luban
from luban.errors import ConfigError

from conftest import assert_no_run, text_config


def pretrained_config(out_dir, name, train, bert, **extra):
    cfg = text_config(out_dir, name, train, **extra)
    cfg["model"] = {"type": "pretrained", "path": str(bert), "dropout": 0.0, **extra.get("model", {})}
    cfg["preprocessing"] = {"tokenizer": {"max_length": 32}}
    cfg["trainer"].update({"epochs": 2, "lr": 0.001, "batch_size": 16, "scheduler": "constant"})
    cfg["trainer"].update(extra.get("trainer", {}))
    return cfg


def test_pretrained_trains_and_round_trips(out_dir, en_data, tiny_bert, tmp_path):
    cfg = pretrained_config(out_dir, "bert", en_data["train"], tiny_bert, data={"test": str(en_data["test"])})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["tokenizer"] == "pretrained"
    assert m["parameters"]["trainable"] == m["parameters"]["total"]
    assert m["test"]["accuracy"] >= 0.9
    assert (run / "model" / "backbone" / "config.json").is_file()
    assert (run / "model" / "tokenizer" / "vocab.txt").is_file() or (run / "model" / "tokenizer" /
                                                                    "tokenizer.json").is_file()
    # the run dir is self-contained: delete the source folder, then reload and predict
    moved = tmp_path / "moved_bert"
    shutil.copytree(tiny_bert, moved)
    try:
        shutil.rmtree(tiny_bert)
        p = luban.load(run)
        out = p.predict(["the room was very good", "my laptop was so bad"])
        for r in out:
            assert r["label"] in ("positive", "negative")
            assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p.evaluate(en_data["test"])["accuracy"] == m["test"]["accuracy"]
    finally:
        shutil.copytree(moved, tiny_bert, dirs_exist_ok=True)


def test_freeze_true_leaves_backbone_unchanged(out_dir, en_data, tiny_bert):
    from transformers import BertModel

    cfg = pretrained_config(out_dir, "frozen", en_data["train"], tiny_bert, model={"freeze": True},
                            trainer={"lr": 0.01})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["parameters"]["trainable"] == 32 * 2 + 2  # only the head
    saved = load_file(str(run / "model" / "model.safetensors"))
    original = BertModel.from_pretrained(str(tiny_bert)).state_dict()
    backbone = {k[len("backbone."):]: v for k, v in saved.items() if k.startswith("backbone.")}
    assert backbone
    compared = 0
    for k, v in backbone.items():
        if k in original:
            assert torch.equal(v, original[k]), k
            compared += 1
    assert compared >= len(original) - 2  # every parameter (a buffer or two may be named differently)
    # ...while the head did train
    history = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_freeze_n_layers(out_dir, en_data, tiny_bert):
    from transformers import BertModel

    cfg = pretrained_config(out_dir, "frozen1", en_data["train"], tiny_bert, model={"freeze": 1},
                            trainer={"epochs": 1})
    run = luban.train(cfg, quiet=True)
    saved = load_file(str(run / "model" / "model.safetensors"))
    original = BertModel.from_pretrained(str(tiny_bert)).state_dict()
    emb = "embeddings.word_embeddings.weight"
    assert torch.equal(saved["backbone." + emb], original[emb])  # embeddings frozen
    k0 = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(saved["backbone." + k0], original[k0])  # first layer frozen
    k1 = "encoder.layer.1.attention.self.query.weight"
    assert not torch.equal(saved["backbone." + k1], original[k1])  # second layer trained


def test_pretrained_missing_path_is_a_config_error(out_dir, en_data, tmp_path):
    cfg = pretrained_config(out_dir, "nobert", en_data["train"], tmp_path / "no_such_model")
    with pytest.raises(ConfigError) as e:
        luban.train(cfg, quiet=True)
    assert "not a local folder" in str(e.value) and "allow_download" in str(e.value)
    assert_no_run(out_dir, "nobert")


def test_pretrained_rejects_other_tokenizer(out_dir, en_data, tiny_bert):
    cfg = pretrained_config(out_dir, "badtok", en_data["train"], tiny_bert)
    cfg["preprocessing"] = {"tokenizer": {"type": "char"}}
    with pytest.raises(ConfigError, match="preprocessing.tokenizer.type"):
        luban.train(cfg, quiet=True)
    assert_no_run(out_dir, "badtok")


def test_layerwise_lr_decay_param_groups(tiny_bert):
    """lr = base * decay^(layers above): top layer 0.5x... embeddings decay^(L+1); the head gets the multiplier."""
    from luban.models.pretrained import PretrainedClassifier

    model = PretrainedClassifier.from_pretrained(str(tiny_bert), 2, layerwise_lr_decay=0.5, head_lr_multiplier=3.0)
    groups = model.param_groups(lr=1.0, weight_decay=0.01)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    L = model.num_layers()
    assert L == 2
    assert lr_of[id(named["head.weight"])] == 3.0
    assert lr_of[id(named["backbone.encoder.layer.1.attention.self.query.weight"])] == 0.5 ** 1
    assert lr_of[id(named["backbone.encoder.layer.0.attention.self.query.weight"])] == 0.5 ** 2
    assert lr_of[id(named["backbone.embeddings.word_embeddings.weight"])] == 0.5 ** (L + 1)
    # no weight decay on biases and LayerNorm weights
    assert wd_of[id(named["backbone.encoder.layer.0.attention.self.query.bias"])] == 0.0
    assert wd_of[id(named["backbone.encoder.layer.0.attention.self.query.weight"])] == 0.01
    # every trainable parameter is in exactly one group
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
