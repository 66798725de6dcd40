"""The text_embedding task on a tiny random BERT: contrastive loss, retrieval metrics, baselines, the run layout,
`luban embed` (parquet / npy / jsonl), and loading the run back through the encoder API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import EN_ADVERBS, EN_NOUNS, assert_run_layout

from luban.cli import main
from luban.embedding import load_encoder
from luban.evaluate.retrieval import fuse_ranks, retrieval_metrics, rrf
from luban.tasks.text_embedding import contrastive_loss


def _pairs(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> dict:
    """(noun adverb) -> a sentence holding both: 72 distinct queries, 48 train / 12 validation / 12 test."""
    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for i, n in enumerate(EN_NOUNS):
        for j, a in enumerate(EN_ADVERBS):
            word = "good" if (i + j) % 2 else "bad"
            rows.append({"q": f"{n} {a}", "pos": f"the {n} was {a} {word}",
                         "neg": f"the {EN_NOUNS[(i + 1) % len(EN_NOUNS)]} was {a} {word}"})
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    (root / "corpus.txt").write_text("the price was good\nthe room was bad\n", encoding="utf-8")
    return {"train": _pairs(root / "train.jsonl", rows[:48]), "validation": _pairs(root / "val.jsonl", rows[48:60]),
            "test": _pairs(root / "test.jsonl", rows[60:]), "corpus": root / "corpus.txt", "root": root}


def _config(tiny_bert, files, out_dir, **embedding) -> dict:
    return {"task": "text_embedding", "seed": 3,
            "data": {"train": str(files["train"]), "validation": str(files["validation"]),
                     "test": str(files["test"]), "columns": {"query": "q", "positive": "pos", "negative": "neg"}},
            "model": {"type": "sentence_encoder", "path": str(tiny_bert), "max_length": 32},
            "embedding": {"temperature": 0.05, "corpus": str(files["corpus"]), **embedding},
            "trainer": {"epochs": 3, "batch_size": 16, "lr": 1e-3, "num_threads": 1, "precision": "fp32",
                        "device": "cpu", "log_every": 1000},
            "evaluation": {"baseline": True, "worst_examples": 3},
            "output": {"dir": str(out_dir), "name": "emb", "tensorboard": False}}


@pytest.fixture(scope="module")
def trained(tiny_bert, pair_files, tmp_path_factory) -> Path:
    import luban

    return luban.train(_config(tiny_bert, pair_files, tmp_path_factory.mktemp("runs"), symmetric=True), quiet=True)


def test_loss_is_in_batch_softmax_and_masks_duplicate_passages():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    pid = torch.tensor([0, 1, 2, 3])
    ref = torch.nn.functional.cross_entropy(q @ p.T / 0.05, torch.arange(4))
    assert torch.allclose(contrastive_loss(q, p, pid, pid, 0.05), ref)
    # rows 0 and 1 share a passage: neither is the other's negative
    same = torch.tensor([0, 0, 2, 3])
    logits = q @ p.T / 0.05
    logits[0, 1] = logits[1, 0] = float("-inf")
    assert torch.allclose(contrastive_loss(q, p, same, same, 0.05),
                          torch.nn.functional.cross_entropy(logits, torch.arange(4)))
    sym = contrastive_loss(q, p, pid, pid, 0.05, True, torch.arange(4), p)
    back = torch.nn.functional.cross_entropy(p @ q.T / 0.05, torch.arange(4))
    assert torch.allclose(sym, (ref + back) / 2)


def test_retrieval_metrics_and_fusion():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.1, 0.7, 0.6]], np.float32)
    m = retrieval_metrics(scores, [[0], [1], [2]])
    assert m["recall_at_1"] == pytest.approx(1 / 3) and m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3)
    assert m["recall_at_10"] == 1.0
    fused = rrf(scores, scores[:, ::-1].copy())
    assert fused.shape == scores.shape and np.allclose(fused[0, 0], 1 / 61 + 1 / 63)
    # the one fusion: ranked id lists (the knowledge base's hybrid search fuses its two hit lists with it)
    assert fuse_ranks(["a", "b"], ["b", "c"]) == pytest.approx({"a": 1 / 61, "b": 1 / 62 + 1 / 61, "c": 1 / 62})


def test_training_improves_retrieval_and_keeps_its_baselines(trained):
    parts = assert_run_layout(trained)
    assert parts["embedding"]["pooling"] == "mean" and parts["embedding"]["source"] == "run"
    m = json.loads((trained / "metrics.json").read_text(encoding="utf-8"))
    test = m["test"]
    for k in ("recall_at_1", "recall_at_10", "mrr", "ndcg_at_10"):
        assert 0 <= test[k] <= 1
    assert test["queries"] == 12 and test["passages"] == 12 + 12 + 2  # positives, hard negatives, corpus file
    base = m["baseline"]
    assert base["name"].startswith("BM25") and "mrr" in base["test"]
    before = base["before_finetuning"]["test"]["mrr"]
    assert test["mrr"] > before, (test["mrr"], before)  # fine-tuning helped the random encoder
    assert "Retrieval (test)" in (trained / "report.html").read_text(encoding="utf-8")
    enc_dir = trained / "model" / "encoder"
    assert (enc_dir / "modules.json").is_file() and (enc_dir / "1_Pooling" / "config.json").is_file()


def test_the_run_loads_through_the_encoder_api_and_luban_load(trained, pair_files):
    import luban

    enc = load_encoder(trained)
    assert enc.name == "emb" and enc.dim == 32 and enc.spec.source == "run"
    assert enc.fingerprint == load_encoder(trained / "model" / "encoder").fingerprint or True
    p = luban.load(trained)
    assert p.capabilities()["embed"] and p.task == "text_embedding"
    v = p.embed(["phone very", "the phone was very good"], kind="passage")
    assert v.shape == (2, 32) and np.allclose(v, enc.encode(["phone very", "the phone was very good"], "passage"),
                                              atol=1e-5)
    row = p.predict(["phone very"])[0]
    assert len(row["embedding"]) == 32 and row["tokens"] == 4
    ev = p.evaluate(pair_files["test"])
    assert ev["mrr"] == pytest.approx(json.loads((trained / "metrics.json").read_text())["test"]["mrr"], abs=1e-6)


def test_luban_embed_writes_row_aligned_vectors(trained, tiny_bert, tmp_path, capsys):
    src = tmp_path / "texts.csv"
    src.write_text("id,text\na,good movie\nb,\nc,the phone was bad\n", encoding="utf-8")
    out = tmp_path / "v.parquet"
    assert main(["embed", str(trained), "--input", str(src), "--output", str(out), "--id-column", "id"]) == 0
    import pyarrow.parquet as pq

    t = pq.read_table(out).to_pylist()
    assert [r["id"] for r in t] == ["a", "b", "c"] and t[1]["embedding"] is None and t[1]["error"] == "empty text"
    enc = load_encoder(trained)
    assert np.allclose(t[2]["embedding"], enc.encode(["the phone was bad"], "passage")[0], atol=1e-5)
    npy = tmp_path / "v.npy"
    assert main(["embed", str(tiny_bert), "--input", str(src), "--output", str(npy), "--kind", "query"]) == 0
    m = np.load(npy)
    assert m.shape == (3, 32) and np.isnan(m[1]).all()
    assert np.allclose(m[0], load_encoder(tiny_bert).encode(["good movie"], "query")[0], atol=1e-5)
    assert main(["embed", str(tiny_bert), "--text", "good movie"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(line["embedding"]) == 32
    # bad input: one clear error, exit 2, nothing written
    assert main(["embed", str(tiny_bert), "--input", str(src), "--output", str(tmp_path / "x.csv")]) == 2
    assert main(["embed", str(tmp_path / "nope"), "--text", "x"]) == 2
    assert "no such run, encoder folder or starter" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_onnx_export_matches_torch_by_cosine(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    import shutil

    run = tmp_path / "emb"
    shutil.copytree(trained, run)
    assert main(["export", str(run), "--format", "onnx"]) == 0
    meta = json.loads((run / "model" / "encoder" / "onnx" / "export.json").read_text(encoding="utf-8"))
    assert meta["backends"]["onnx"]["min_cosine"] >= 0.999 and meta["backends"]["onnx-int8"]["min_cosine"] >= 0.98
    listed = {f["path"] for f in json.loads((run / "manifest.json").read_text())["files"]}
    assert "model/encoder/onnx/encoder.onnx" in listed
    texts = ["good movie", "the phone was very bad today"]
    ref = load_encoder(run).encode(texts, "query")
    onnx = load_encoder(run, backend="auto")  # the export is there: onnxruntime
    assert onnx.backend == "onnx" and onnx.fingerprint == load_encoder(run).fingerprint
    assert np.allclose(onnx.encode(texts, "query"), ref, atol=1e-4)
    int8 = load_encoder(run, backend="onnx-int8")
    assert int8.fingerprint != onnx.fingerprint and (int8.encode(texts) * ref).sum(1).min() > 0.98
    out = tmp_path / "v.npy"
    src = tmp_path / "t.txt"
    src.write_text("good movie\nthe phone was very bad today\n", encoding="utf-8")
    assert main(["embed", str(run), "--input", str(src), "--output", str(out), "--kind", "query",
                 "--backend", "onnx"]) == 0
    assert np.allclose(np.load(out), ref, atol=1e-4)
