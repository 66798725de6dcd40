"""Embedding on Ray actors (luban.lifecycle.ray_pool): `luban kb build / add --backend ray` and `luban embed
--backend ray` give what the local path gives (same chunks, vectors within 1e-5, rows in input order), and their bad
options fail before anything loads or is written."""

import json
import sys

import numpy as np
import pytest
from kb_fixtures import HashEncoder, base, kb_config, main  # skips without bm25s / faiss

from luban.embedding import load_encoder
from luban.errors import ConfigError
from luban.lifecycle.ray_pool import ray_missing

SENTENCES = ["这个手机很好。", "那个酒店真差！", "我的电影一般；", "他们的餐厅很干净。", "good movie.", "bad plot!"]


def _docs(folder, n_files: int, lines: int, seed: int):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for f in range(n_files):
        text = "\n".join("".join(rng.choice(SENTENCES, size=3)) for _ in range(lines))
        (folder / f"doc{f}.txt").write_text(text, encoding="utf-8")
    return folder


def _kb(folder):
    v = folder / f"v{json.loads((folder / 'kb.json').read_text())['version']}"
    chunks = (v / "chunks.jsonl").read_text(encoding="utf-8")
    ids, vectors = np.load(v / "ids.npy"), np.load(v / "vectors.npy")
    return chunks, vectors[np.argsort(ids)]


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_embedding_matches_local(local_ray, tiny_bert, tmp_path):
    docs = _docs(tmp_path / "docs", 3, 12, seed=0)
    extra = _docs(tmp_path / "extra", 1, 10, seed=1) / "doc0.txt"
    built = {}
    for backend in ("local", "ray"):
        out = tmp_path / f"kb_{backend}"
        cfg = kb_config({"docs": [str(docs)], "embedder": str(tiny_bert), "out": str(out), "chunk_tokens": 24,
                         "overlap_tokens": 4, "batch_size": 4, "backend": backend, "workers": 2})
        base.build(cfg, load_encoder(tiny_bert))
        assert main(["kb", "add", str(out), str(extra), "--batch-size", "3", "--backend", backend,
                     "--workers", "2"]) == 0
        built[backend] = _kb(out)
    (local_chunks, local_vec), (ray_chunks, ray_vec) = built["local"], built["ray"]
    assert ray_chunks == local_chunks and local_chunks.count("\n") >= 30  # same ids, texts, offsets, in order
    assert ray_vec.shape == local_vec.shape and np.abs(ray_vec - local_vec).max() < 1e-5
    # luban embed: a file's rows in order, in chunks of 7 rows over 2 actors
    texts = [json.loads(line)["text"] for line in local_chunks.splitlines()]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                                       encoding="utf-8")
    for backend in ("torch", "ray"):
        assert main(["embed", str(tiny_bert), "--input", str(tmp_path / "in.jsonl"), "--output",
                     str(tmp_path / f"{backend}.npy"), "--chunk-rows", "7", "--backend", backend]) == 0
    a, b = np.load(tmp_path / "torch.npy"), np.load(tmp_path / "ray.npy")
    assert a.shape == (len(texts), local_vec.shape[1]) and np.abs(a - b).max() < 1e-5
    # an actor that cannot load the embedder: its luban error, raised as itself on the driver
    with pytest.raises(ConfigError, match="no such run, encoder folder"):
        base.embed_passages(HashEncoder(), texts, 4, "ray", 1, "local", ref=str(tmp_path / "nowhere"))


def test_bad_ray_options_fail_before_anything_loads(tmp_path, monkeypatch, capsys):
    docs = _docs(tmp_path / "docs", 1, 2, seed=0)
    out = tmp_path / "kb"
    build = ["kb", "build", str(docs), "--embedder", "nowhere-model", "--out", str(out)]
    assert main([*build, "--backend", "ray", "--workers", "0"]) == 2
    assert "kb.workers" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="kb.workers"):
        kb_config({"docs": [str(docs)], "embedder": "x", "out": str(out), "workers": 0})
    with pytest.raises(ConfigError, match="kb.backend"):
        kb_config({"docs": [str(docs)], "embedder": "x", "out": str(out), "backend": "spark"})
    assert main(["embed", "nowhere-model", "--input", str(docs / "doc0.txt"), "--output", str(tmp_path / "v.npy"),
                 "--backend", "ray", "--workers", "0"]) == 2
    assert "--workers 0" in capsys.readouterr().err
    if not ray_missing():  # a cluster address that does not answer: said in seconds, before the embedder loads
        assert main([*build, "--backend", "ray", "--address", "127.0.0.1:1"]) == 2
        assert "--address 127.0.0.1:1: no Ray cluster answers there" in capsys.readouterr().err
        assert main(["kb", "add", str(out), str(docs), "--backend", "ray", "--address", "head"]) == 2
        assert "--address 'head': expected local, auto, HOST:PORT" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # ray not installed
    assert main([*build, "--backend", "ray"]) == 2
    assert "--backend ray" in capsys.readouterr().err
    assert main(["kb", "add", str(out), str(docs), "--backend", "ray"]) == 2
    assert "--backend ray" in capsys.readouterr().err
    assert main(["embed", "nowhere-model", "--input", str(docs / "doc0.txt"), "--output", str(tmp_path / "v.npy"),
                 "--backend", "ray"]) == 2
    assert "--backend ray" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]  # nothing written
