"""Every text model type learns the small separable Chinese dataset and round-trips through its run dir."""

from __future__ import annotations

import json

import numpy as np
import pytest

import luban
from conftest import text_config

MODELS = {
    "ngram_bag_nb": ({"type": "ngram_bag", "ngram_range": [1, 2], "weighting": "nb"},
                     {"optimizer": "adam", "lr": 0.05, "grad_clip": None}),
    "ngram_bag_fasttext": ({"type": "ngram_bag", "ngram_range": [1, 3], "weighting": "tfidf", "embedding_dim": 16,
                            "dropout": 0.1}, {"lr": 0.02, "epochs": 6}),
    "ngram_bag_jieba": ({"type": "ngram_bag", "analyzer": "jieba", "ngram_range": [1, 1], "weighting": "binary"},
                        {"optimizer": "adam", "lr": 0.05}),
    "rnn_attention": ({"type": "rnn", "cell": "gru", "embedding_dim": 16, "hidden_size": 16}, {"epochs": 4}),
    "transformer": ({"type": "transformer", "d_model": 32, "nhead": 2, "num_layers": 1, "dim_feedforward": 64,
                     "dropout": 0.0}, {"epochs": 6, "lr": 0.003}),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_text_model_learns_and_round_trips(name, out_dir, zh_data):
    model, trainer = MODELS[name]
    cfg = text_config(out_dir, name, zh_data["train"], trainer=trainer, data={"test": str(zh_data["test"])})
    cfg["model"] = model
    run = luban.train(cfg, quiet=True)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]
    p = luban.load(run)
    texts = ["这个手机非常好", "那个酒店真差啊"]
    out = p.predict(texts)
    assert [o["label"] for o in out] == ["positive", "negative"]
    assert all(abs(sum(o["probabilities"].values()) - 1) < 1e-5 for o in out)
    # the reloaded model scores the test file exactly as training did
    assert p.evaluate(zh_data["test"])["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_ngram_featurizer_save_load_round_trip(tmp_path):
    from luban.data.ngrams import NgramFeaturizer

    texts, labels = ["很好很好", "很差", "好", "差差"], [1, 0, 1, 0]
    f = NgramFeaturizer("char", (1, 2), "nb").fit(texts, labels)
    f.save(tmp_path / "feat")
    g = NgramFeaturizer.load(tmp_path / "feat")
    for a, b in zip(f.encode_weighted(texts + ["没见过"])[1], g.encode_weighted(texts + ["没见过"])[1]):
        np.testing.assert_allclose(a, b)
    ids, w = g.encode_weighted(["很好"])
    assert pytest.approx(float(np.sqrt((w[0] ** 2).sum()))) == 1.0  # rows are L2-normalized
    # "好" only occurs in positive texts, "很" in both: the NB weight of 好 is larger
    vocab = dict(zip(["好", "很"], g.feature_ids(["好", "很"])))
    assert g.weights[vocab["好"]] > g.weights[vocab["很"]]
    # text with no known n-gram -> a single padding entry of weight 0
    ids, w = g.encode_weighted(["未知"])
    assert ids[0].tolist() == [g.pad_id] and w[0].tolist() == [0.0]
