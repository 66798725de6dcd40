"""The encoder API (luban.embedding): load_encoder on an HF folder, settings from the model, fingerprints, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from luban.embedding import load_encoder
from luban.embedding.encoder import detect_spec
from luban.errors import ConfigError, LubanError

TEXTS = ["good movie", "bad movie", "好 电影", "the plot was good and the acting was bad", "good"]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_encode_gives_unit_rows_in_order(tiny_bert):
    enc = load_encoder(tiny_bert)
    assert enc.dim == 32 and enc.name == tiny_bert.name and enc.max_length == 64
    v = enc.encode(TEXTS, batch_size=2)
    assert v.shape == (len(TEXTS), 32) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([enc.encode([t])[0] for t in TEXTS])
    assert np.allclose(v, one_by_one, atol=1e-5)  # padding and length-sorting change nothing
    assert enc.encode([]).shape == (0, 32)
    assert enc.count_tokens(["good movie"]) == [4]  # [CLS] good movie [SEP]
    info = enc.info()
    assert info["dim"] == 32 and info["pooling"] == "mean" and info["fingerprint"].startswith("sha256:")


def test_prefixes_and_pooling_come_from_the_model(tiny_bert, tmp_path):
    plain = load_encoder(tiny_bert)
    assert plain.spec.query_prefix == "" and plain.spec.source == "default"
    # sentence-transformers files say cls pooling and prompts
    st = _copy(tiny_bert, tmp_path / "st")
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                              "pooling_mode_mean_tokens": False}))
    (st / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "bad ", "passage": "good "}}))
    (st / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    enc = load_encoder(st)
    assert (enc.spec.pooling, enc.spec.query_prefix, enc.spec.passage_prefix, enc.max_length) == \
        ("cls", "bad ", "good ", 16)
    q, p = enc.encode(["good movie"], "query"), enc.encode(["good movie"], "passage")
    assert not np.allclose(q, p)  # the prefix reaches the model
    assert enc.fingerprint != plain.fingerprint  # same weights, other pooling and prefixes
    # an e5 import (luban_import.json names the catalog entry): mean pooling, query: / passage:
    e5 = _copy(tiny_bert, tmp_path / "e5")
    (e5 / "luban_import.json").write_text(json.dumps({"catalog": "starter-e5-small"}))
    spec = detect_spec(e5)
    assert (spec.family, spec.pooling, spec.query_prefix, spec.passage_prefix) == ("e5", "mean", "query: ",
                                                                                     "passage: ")


def test_fingerprint_follows_the_weights(tiny_bert, tmp_path):
    a = load_encoder(tiny_bert)
    assert a.fingerprint == load_encoder(tiny_bert).fingerprint
    other = _copy(tiny_bert, tmp_path / "other")
    import torch
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(other))
    with torch.no_grad():
        m.embeddings.word_embeddings.weight[5] += 1.0
    m.save_pretrained(str(other))
    assert load_encoder(other).fingerprint != a.fingerprint
    assert load_encoder(tiny_bert, max_length=8).fingerprint != a.fingerprint


def test_bad_refs_are_one_clear_error(tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match="no such run, encoder folder or starter"):
        load_encoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not an encoder folder"):
        load_encoder(tmp_path / "empty")
    enc = load_encoder(tiny_bert)
    with pytest.raises(ConfigError, match="kind 'doc'"):
        enc.encode(["x"], kind="doc")
    with pytest.raises(LubanError, match="text 1: expected a string"):
        enc.encode(["x", None])
    with pytest.raises(ConfigError, match="backend"):
        load_encoder(tiny_bert, backend="tensorrt")


def test_real_e5_small_embeds_chinese_by_meaning():
    from luban.hub.catalog import cached

    if cached("starter-e5-small") is None:
        pytest.skip("starter-e5-small is not pulled (luban models pull starter-e5-small)")
    enc = load_encoder("starter-e5-small")
    assert enc.spec.family == "e5" and enc.spec.query_prefix == "query: " and enc.dim == 384
    q = enc.encode(["今天天气怎么样"], "query")
    p = enc.encode(["今天是晴天，气温二十度。", "这台电脑的显卡需要更新驱动程序。"], "passage")
    s = (q @ p.T)[0]
    assert s[0] > s[1]
