"""Translation / summarization: beam search on crafted distributions, the encoder-decoder's KV cache, a tiny
Transformer that learns to reverse sequences through luban.train, the run directory round trip (predict, evaluate,
generate_text, stream_text, the CLI), summarization with its lead-N baseline and the copy head, an HF BART
fine-tune saved and reloaded offline, and bad input. Small and single-threaded."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_no_run

import luban
from luban.errors import ConfigError, DataError
from luban.generation.beam import beam_search, iter_sample, sample
from luban.models.seq2seq import Seq2SeqTransformer


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- beam search

EOS, A, B, C, START = 0, 1, 2, 3, 4


class Markov:
    """A crafted model: the next-token distribution depends on the last token only (no state)."""

    def __init__(self, rows: dict[int, dict[int, float]], vocab: int = 5):
        self.table = torch.full((vocab, vocab), -30.0)
        for prev, dist in rows.items():
            for tok, p in dist.items():
                self.table[prev, tok] = math.log(p)
        self.calls = 0

    def step(self, ids, state):
        self.calls += 1
        return self.table[ids[:, -1]], state


def start(n=1):
    return torch.full((n, 1), START, dtype=torch.long)


def test_beam_search_finds_a_better_sequence_than_greedy():
    # greedy takes A (0.6) then eos (0.4): p = 0.24; beam search finds B (0.4) then eos (0.9): p = 0.36
    m = Markov({START: {A: 0.6, B: 0.4}, A: {EOS: 0.4, A: 0.3, B: 0.3}, B: {EOS: 0.9, A: 0.1}})
    assert sample(m.step, start(), 10, EOS) == [[A]]
    assert beam_search(m.step, start(), 1, 10, EOS) == [[A]]
    out, scores = beam_search(m.step, start(), 2, 10, EOS, return_scores=True)
    assert out == [[B]]
    assert scores[0] == pytest.approx(math.log(0.36) / 2)  # length 2: B and the eos


def test_length_penalty_decides_between_short_and_long():
    # [A] scores log 0.5 over 2 tokens; [B, C] scores log(0.5 * 0.9 * 0.9) over 3 tokens
    m = Markov({START: {A: 0.5, B: 0.5}, A: {EOS: 1.0}, B: {C: 0.9, EOS: 0.1}, C: {EOS: 0.9, C: 0.1}})
    short, long_ = math.log(0.5), math.log(0.5 * 0.9 * 0.9)
    assert short / 2 ** 0 > long_ / 3 ** 0 and short / 2 < long_ / 3
    assert beam_search(m.step, start(), 2, 10, EOS, length_penalty=0.0) == [[A]]    # raw log-probability
    assert beam_search(m.step, start(), 2, 10, EOS, length_penalty=1.0) == [[B, C]]  # per-token average
    assert beam_search(m.step, start(), 2, 10, EOS, length_penalty=-1.0) == [[A]]   # favours short


def test_min_one_token_and_max_new_tokens():
    # eos is the likeliest first token, yet an output is never empty; a loop without eos stops at the limit
    m = Markov({START: {EOS: 0.9, A: 0.1}, A: {A: 0.9, EOS: 0.1}})
    assert sample(m.step, start(), 5, EOS) == [[A, A, A, A, A]]
    # finished [A] scores log(0.1 * 0.1); the live [A] * 5, log(0.1 * 0.9^4), wins when the length runs out
    assert beam_search(m.step, start(), 3, 5, EOS, length_penalty=0.0) == [[A, A, A, A, A]]
    assert beam_search(m.step, start(), 3, 4, EOS, length_penalty=0.0, min_new_tokens=0) == [[]]
    assert [len(x) for x in beam_search(m.step, start(2), 2, 3, None)] == [3, 3]


def tiny_transformer(**kw) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    args = {"d_model": 16, "nhead": 2, "num_encoder_layers": 1, "num_decoder_layers": 2, "dim_feedforward": 32,
            "dropout": 0.0}
    return Seq2SeqTransformer(12, 12, **{**args, **kw}).eval()


def sources(n=5, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(4, 12) for _ in range(rng.randint(2, 7))] for _ in range(n)]


def decode(model, srcs, beams=1, **kw):
    from luban.data.batching import pad_ids

    src, mask = pad_ids(srcs, 0)
    state = model.start_state(src, mask)
    first = torch.full((len(srcs), 1), 2, dtype=torch.long)

    def step(ids, st):
        scores, st = model.decode_step(ids, st)
        scores[:, :3] = float("-inf")  # never pad / unk / bos
        return scores, st

    if beams == 1 and not kw:
        return sample(step, first, 8, 3, state=state, reorder=model.reorder_state)
    return beam_search(step, first, beams, 8, 3, state=state, reorder=model.reorder_state, **kw)


@pytest.mark.parametrize("kw", [{}, {"positions": "learned"}, {"shared_vocabulary": True, "copy": True}])
def test_kv_cache_decoding_matches_the_full_forward(kw):
    model = tiny_transformer(**kw)
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = (src != 0).long()
    tgt = torch.tensor([[2, 5, 9, 4, 7], [2, 11, 6, 6, 8]])
    with torch.no_grad():
        full = model(src, mask, tgt)
        state = model.start_state(src, mask)
        steps = []
        for i in range(tgt.shape[1]):
            scores, state = model.decode_step(tgt[:, i:i + 1], state)
            steps.append(scores)
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
    if kw.get("copy"):  # the copy head gives log-probabilities
        assert torch.allclose(full.exp().sum(-1), torch.ones(2, 5), atol=1e-4)


def test_one_beam_is_greedy_and_batches_decode_like_single_rows():
    model = tiny_transformer()
    srcs = sources(6)
    greedy = decode(model, srcs)
    assert decode(model, srcs, beams=1, length_penalty=1.0) == greedy
    beams = decode(model, srcs, beams=3)
    # rows finish at different steps (and are dropped from the batch): each equals decoding it alone
    assert beams == [decode(model, [s], beams=3)[0] for s in srcs]
    assert greedy == [decode(model, [s])[0] for s in srcs]


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    spread = {A: 0.35, B: 0.25, C: 0.2, EOS: 0.2}
    m = Markov({START: {A: 0.4, B: 0.35, C: 0.25}, A: spread, B: spread, C: spread})

    def draw(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return sample(m.step, start(8), 12, EOS, do_sample=True, temperature=1.0, generator=g, **kw)

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert draw(3, top_k=1) == sample(m.step, start(8), 12, EOS)
    steps = list(iter_sample(m.step, start(2), 3, EOS))  # step by step: (rows still running, their tokens)
    assert steps[0] == ([0, 1], [A, A]) and len(steps) == 3


# ----------------------------------------------------------------------------------------------- the task


def write_pairs(path: Path, pairs, header=("source", "target")) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


def reversal_pairs(n: int, seed: int):
    rng = random.Random(seed)
    seqs = set()
    while len(seqs) < n:
        seqs.add(" ".join(rng.choice("0123456789") for _ in range(rng.randint(3, 6))))
    seqs = sorted(seqs)
    rng.shuffle(seqs)
    return [(s, " ".join(reversed(s.split()))) for s in seqs]


def reversal_config(out_dir: Path, train: Path, name: str, **extra) -> dict:
    cfg = {"task": "translation", "seed": 1,
           "data": {"train": str(train), "columns": {"source": "source", "target": "target"},
                    "split": {"validation": 0.05, "test": 0.1}},
           "preprocessing": {"tokenizer": {"type": "whitespace"}},
           "model": {"type": "seq2seq_transformer", "d_model": 32, "nhead": 2, "num_encoder_layers": 1,
                     "num_decoder_layers": 1, "dim_feedforward": 64, "dropout": 0.0, "shared_vocabulary": True},
           "trainer": {"epochs": 20, "batch_size": 32, "lr": 0.01, "scheduler": "cosine", "warmup_ratio": 0.1,
                       "num_threads": 1, "device": "cpu", "precision": "fp32", "log_every": 1000},
           "generation": {"num_beams": 2, "max_new_tokens": 12},
           "output": {"dir": str(out_dir), "name": name, "tensorboard": False}}
    for k, v in extra.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


@pytest.fixture(scope="module")
def reversal_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reverse")
    train = write_pairs(root / "pairs.tsv", reversal_pairs(1000, seed=0))
    run = luban.train(reversal_config(root / "runs", train, "rev"), quiet=True)
    return {"run": run, "root": root, "train": train,
            "metrics": json.loads((run / "metrics.json").read_text(encoding="utf-8"))}


def test_tiny_seq2seq_learns_to_reverse(reversal_run):
    m = reversal_run["metrics"]
    assert m["task"] == "translation" and m["main_metric"] == "bleu"
    assert m["test"]["bleu"] > 90 and m["test"]["chrf"] > 90
    assert m["test"]["decoding"]["num_beams"] == 2
    assert m["baseline"] is None
    history = [json.loads(line) for line in (reversal_run["run"] / "history.jsonl").read_text().splitlines()]
    assert {"val_bleu", "val_chrf", "val_loss"} <= set(history[0])
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    # held-out sequences, decoded by a fresh predictor from the run dir: (nearly) all exactly reversed
    p = luban.load(reversal_run["run"])
    unseen = reversal_pairs(1200, seed=0)[1000:]
    preds = p.predict([s for s, _ in unseen], num_beams=1)
    exact = sum(r["text"] == t for r, (_, t) in zip(preds, unseen)) / len(unseen)
    assert exact >= 0.9
    assert {"text", "tokens", "finish_reason", "seconds", "tokens_per_second"} <= set(preds[0])
    report = (reversal_run["run"] / "report.html").read_text(encoding="utf-8")
    assert "Worst test cases" in report and "test bleu" in report


def test_predict_knobs_generate_text_and_stream(reversal_run):
    p = luban.load(reversal_run["run"])
    one = p.generate_text("1 2 3 4", num_beams=1)
    assert one["text"] == "4 3 2 1" and one["tokens"] == 4 and one["finish_reason"] == "eos"
    assert "".join(p.stream_text("1 2 3 4", num_beams=1)) == "4 3 2 1"
    assert len(list(p.stream_text("1 2 3 4", num_beams=1))) > 1        # piece by piece
    assert "".join(p.stream_text("1 2 3 4", num_beams=2)) == p.generate_text("1 2 3 4", num_beams=2)["text"]
    cut = p.generate_text("1 2 3 4", max_new_tokens=2, num_beams=1)
    assert cut["text"] == "4 3" and cut["finish_reason"] == "length"
    assert p.generate_text("1 2 3 4", stop=[" 2"], num_beams=1)["text"] == "4 3"
    sampled = [p.generate_text("5 6 7", do_sample=True, temperature=1.5, seed=s)["text"] for s in (0, 0, 1)]
    assert sampled[0] == sampled[1]
    with pytest.raises(ConfigError, match="unknown decoding option"):
        p.predict(["1 2"], beams=3)
    with pytest.raises(ConfigError, match="num_beams"):
        p.predict(["1 2"], num_beams=0)
    with pytest.raises(DataError, match="input 2: empty text"):
        p.predict(["1 2", "  "])


def test_served_translation_batches_concurrent_requests(reversal_run):
    """Concurrent translation requests through the OpenAI routes: decoded together, each its own answer; a chat is
    answered from its last user message; a request with its own knobs is decoded apart."""
    import threading

    from fastapi.testclient import TestClient

    from luban.serve.app import create_app
    from luban.serve.settings import ServeSettings

    p = luban.load(reversal_run["run"])
    sources = ["1 2 3 4", "5 6 7", "8 9", "2 4 6 8 1", "3 3 5"]
    expected = [p.generate_text(x)["text"] for x in sources]
    app = create_app(settings=ServeSettings(runs=[str(reversal_run["run"])], max_active_generations=8))
    got = {}
    with TestClient(app) as c:
        start = threading.Barrier(len(sources) + 1)

        def go(i):
            start.wait()
            got[i] = c.post("/v1/completions", json={"prompt": sources[i]}).json()

        def other():
            start.wait()
            got["cut"] = c.post("/v1/completions", json={"prompt": "1 2 3 4", "max_tokens": 2}).json()

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(sources))]
        threads.append(threading.Thread(target=other))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        chat = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "9 8 7"}]}).json()
        gen = app.state.registry.models[reversal_run["run"].name].generation
        refused = c.post("/v1/completions", json={"prompt": "1 2", "ignore_eos": True})  # causal LMs only
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "ignore_eos"
    assert [got[i]["choices"][0]["text"] for i in range(len(sources))] == expected
    assert got["cut"]["choices"][0]["text"] == "4 3" and got["cut"]["choices"][0]["finish_reason"] == "length"
    assert got[0]["usage"]["completion_tokens"] == 4
    assert chat["choices"][0]["message"]["content"] == "7 8 9"
    assert gen.sequence_steps > gen.forwards  # at least one predict() call answered several requests


def _drain(batch, limit: int = 100) -> tuple[dict, dict, list]:
    """Step a request batch to the end: each request's joined text, its events (or its error), and the sizes of
    the forwards."""
    texts, events, sizes = {}, {}, []
    for _ in range(limit):
        if batch.done:
            break
        for k, ev in batch.step():
            events.setdefault(k, []).append(ev)
            if not isinstance(ev, Exception):
                texts[k] = texts.get(k, "") + ev["text"]
        sizes += batch.forward_sizes
    assert batch.done
    return texts, events, sizes


def test_batched_requests_stream_token_by_token_and_equal_their_answers_alone(reversal_run):
    """Greedy requests with the same knobs advance together one token per step (each row's text streamed);
    rows end apart (eos, a stop string, the length limit, a cancel); a seeded sampled request decodes alone, so
    it gets its own draws; beam search is answered whole; a bad knob fails only its request."""
    p = luban.load(reversal_run["run"])
    greedy = {"num_beams": 1}
    reqs = [{"prompt": "1 2 3 4", **greedy}, {"prompt": "5 6 7", **greedy}, {"prompt": "8 9 1 2 3 4", **greedy},
            {"prompt": "2 4 6", **greedy, "stop": [" 4"]}, {"prompt": "1 2 3 4", **greedy, "max_new_tokens": 2},
            {"prompt": "3 5 7", "num_beams": 1, "do_sample": True, "temperature": 1.5, "seed": 3},
            {"prompt": "9 8 7", "num_beams": 2}, {"prompt": "1 2", "num_beams": 0}]
    batch = p.stream_events_batch(reqs)
    texts, events, sizes = _drain(batch)
    for k, r in enumerate(reqs[:7]):
        alone = p.generate_text(r["prompt"], **{x: v for x, v in r.items() if x != "prompt"})
        assert texts[k] == alone["text"], (k, texts[k], alone)
        assert events[k][-1]["finish_reason"] == alone["finish_reason"]
        assert sum(e["finish_reason"] is not None for e in events[k]) == 1
    assert len(events[0]) > 2 and events[0][0]["text"] and events[0][0]["token"] is not None  # streamed
    assert len(events[6]) == 1 and events[6][0]["tokens"] == 3  # beam search: whole
    assert isinstance(events[7][0], Exception) and "num_beams" in str(events[7][0])
    assert max(sizes) == 3  # the three plain greedy requests shared each forward

    batch = p.stream_events_batch([{"prompt": "1 2 3 4", **greedy}, {"prompt": "5 6 7 8", **greedy}])
    first = dict(batch.step())
    assert set(first) == {0, 1} and first[0]["finish_reason"] is None
    batch.cancel(1)  # the client went away: no more events for it
    texts, events, sizes = _drain(batch)
    assert 1 not in events and first[0]["text"] + texts[0] == "4 3 2 1"
    assert events[0][-1]["finish_reason"] == "eos"


def test_served_translation_streams_when_decoding_greedily(reversal_run, tmp_path):
    """With num_beams 1, a streamed completion arrives in several chunks that join to the plain answer."""
    import shutil

    import yaml
    from fastapi.testclient import TestClient

    from luban.serve.app import create_app
    from luban.serve.settings import ServeSettings

    run = Path(shutil.copytree(reversal_run["run"], tmp_path / "rev1"))
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    cfg["generation"]["num_beams"] = 1
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    app = create_app(settings=ServeSettings(runs=[str(run)]))
    with TestClient(app) as c:
        plain = c.post("/v1/completions", json={"prompt": "1 2 3 4 5"}).json()
        with c.stream("POST", "/v1/completions", json={"prompt": "1 2 3 4 5", "stream": True}) as r:
            chunks = [json.loads(line[len("data: "):]) for line in r.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
    pieces = [ch["choices"][0]["text"] for ch in chunks if ch["choices"]]
    assert plain["choices"][0]["text"] == "5 4 3 2 1"
    assert "".join(pieces) == "5 4 3 2 1" and sum(1 for x in pieces if x) > 2
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_evaluate_file_and_cli(reversal_run, tmp_path, capsys):
    from luban.cli import main

    test = write_pairs(tmp_path / "test.tsv", reversal_pairs(1100, seed=0)[1000:])
    p = luban.load(reversal_run["run"])
    m = p.evaluate(test)
    assert m["bleu"] > 90 and "loss" in m and len(m["worst"]) == 10
    assert p.predict_file(test)[0]["text"]
    assert main(["predict", str(reversal_run["run"]), "--text", "7 8 9"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "9 8 7"
    assert main(["evaluate", str(reversal_run["run"]), "--data", str(test)]) == 0
    assert "bleu" in capsys.readouterr().out


def test_same_seed_same_metrics(tmp_path):
    train = write_pairs(tmp_path / "pairs.tsv", reversal_pairs(200, seed=3))
    runs = [luban.train(reversal_config(tmp_path / "runs", train, f"r{i}", trainer={"epochs": 2}), quiet=True)
            for i in range(2)]
    a, b = (json.loads((r / "metrics.json").read_text(encoding="utf-8")) for r in runs)
    assert a["test"]["bleu"] == b["test"]["bleu"] and a["test"]["loss"] == b["test"]["loss"]
    assert a["validation"]["loss"] == b["validation"]["loss"]


def french_pairs():
    """English -> French phrases with apostrophes, hyphens and French spacing before ? and ! (144 pairs)."""
    import itertools

    subj = [("i love", "J'aime"), ("you love", "Tu aimes"), ("she loves", "Elle aime"), ("we love", "Nous aimons"),
            ("they hate", "Ils détestent"), ("he hates", "Il déteste")]
    obj = [("tea", "le thé"), ("summer", "l'été"), ("music", "la musique"), ("grandmother", "la grand-mère"),
           ("today", "aujourd'hui"), ("the rainbow", "l'arc-en-ciel"), ("water", "l'eau"), ("bread", "le pain")]
    end = [(".", "."), ("?", " ?"), ("!", " !")]
    pairs = [(f"{s} {o} {e}", f"{fs} {fo}{fe}") for (s, fs), (o, fo), (e, fe) in itertools.product(subj, obj, end)]
    random.Random(0).shuffle(pairs)
    return pairs


@pytest.mark.parametrize("target,source", [("bpe", "wordpiece"), ("wordpiece", "bpe")])
def test_subword_translation_prints_and_scores_normal_text(target, source, tmp_path):
    """A subword target decodes to text as written ("J'aime l'été !", not "J ' aime l ' été !"), and BLEU/chrF
    score that text: the metrics equal sacrebleu's on the predictions the user sees."""
    from luban.evaluate import text_metrics as tm

    pairs = french_pairs()
    train = write_pairs(tmp_path / "fr.tsv", pairs)
    cfg = reversal_config(tmp_path / "runs", train, "fr",
                          preprocessing={"tokenizer": {"type": target, "vocab_size": 120}},
                          model={"shared_vocabulary": False, "source_tokenizer": {"type": source, "vocab_size": 100}},
                          trainer={"epochs": 12, "batch_size": 16}, data={"split": {"validation": 0.1, "test": 0.15}})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    hyps = [r["hypothesis"] for r in m["test"]["examples"]]
    refs = [r["reference"] for r in m["test"]["examples"]]
    artifacts = (" ' ", " - ", " .", "' ", " -")
    assert not any(a in h for h in hyps for a in artifacts)
    assert any("'" in h for h in hyps) and any(h.endswith((" ?", " !")) for h in hyps)
    assert sum(h == r for h, r in zip(hyps, refs)) >= len(refs) // 2
    assert m["test"]["bleu"] > 50
    p = luban.load(run)
    held_out = write_pairs(tmp_path / "held_out.tsv", [(r["source"], r["reference"]) for r in m["test"]["examples"]])
    preds = [r["text"] for r in p.predict([r["source"] for r in m["test"]["examples"]])]
    assert preds == hyps
    scored = p.evaluate(held_out)
    assert scored["bleu"] == pytest.approx(tm.bleu(preds, refs))
    assert scored["chrf"] == pytest.approx(tm.chrf(preds, refs))
    src = m["test"]["examples"][0]["source"]
    assert "".join(p.stream_text(src, num_beams=1)) == p.generate_text(src, num_beams=1)["text"]


def summaries(n: int, seed: int):
    """Documents of 2-3 Chinese 'sentences'; the summary is the first sentence without its full stop."""
    rng = random.Random(seed)
    chars = "天地人和山水日月风云花草木金石"
    out = []
    for _ in range(n):
        sents = ["".join(rng.choice(chars) for _ in range(rng.randint(3, 6))) for _ in range(rng.randint(2, 3))]
        out.append(("。".join(sents) + "。", sents[0]))
    return out


def test_summarization_reports_rouge_beside_the_lead_baseline(tmp_path):
    train = write_pairs(tmp_path / "docs.tsv", summaries(300, seed=1))
    cfg = reversal_config(tmp_path / "runs", train, "summ", task="summarization",
                          preprocessing={"tokenizer": {"type": "char"}},
                          model={"copy_source": True, "d_model": 32}, trainer={"epochs": 3, "lr": 0.005},
                          generation={"lead_n": 1, "num_beams": 2, "max_new_tokens": 16})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["main_metric"] == "rouge_l"
    assert {"rouge_1", "rouge_2", "rouge_l", "loss"} <= set(m["test"])
    lead = m["baseline"]
    assert lead["name"].startswith("lead-1")
    assert lead["test"]["rouge_l"] == pytest.approx(1.0)  # the lead sentence is the summary; "。" is not scored
    assert m["test"]["rouge_l"] > 0.3            # copying is easy with the copy head, even after 3 epochs
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "baseline: lead-1" in report and "test rouge_l" in report
    p = luban.load(run)
    assert set(p.evaluate(train)) >= {"rouge_l", "lead_baseline_rouge_l"}


# ----------------------------------------------------------------------------------------------- HF seq2seq


@pytest.fixture(scope="module", params=["bart", "t5"])
def tiny_hf(request, tmp_path_factory) -> Path:
    """A tiny random BART or T5 with a word-level tokenizer, saved as a local HF folder (nothing downloaded)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        PreTrainedTokenizerFast,
        T5Config,
        T5ForConditionalGeneration,
    )

    folder = tmp_path_factory.mktemp(f"tiny_{request.param}")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{str(d): 4 + d for d in range(10)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    torch.manual_seed(0)
    if request.param == "bart":  # decoding starts from </s>
        model = BartForConditionalGeneration(BartConfig(
            vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=None,
            forced_eos_token_id=None))
    else:  # decoding starts from <pad>; relative positions
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=len(vocab), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
            pad_token_id=0, eos_token_id=2, decoder_start_token_id=0))
    model.save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return folder


def test_hf_seq2seq_fine_tunes_and_reloads_offline(tiny_hf, tmp_path):
    train = write_pairs(tmp_path / "pairs.tsv", reversal_pairs(300, seed=5))
    cfg = reversal_config(tmp_path / "runs", train, "bart", trainer={"epochs": 1, "lr": 0.003},
                          generation={"num_beams": 2, "max_new_tokens": 8})
    cfg["preprocessing"] = {}
    cfg["model"] = {"type": "pretrained_seq2seq", "path": str(tiny_hf), "max_source_length": 16,
                    "max_target_length": 16}
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["tokenizer"] == "pretrained" and m["epochs_run"] == 1
    assert (run / "model" / "backbone" / "config.json").is_file()
    # the run dir is self-contained: move the source folder away, reload, decode, score the same
    moved = tmp_path / "moved"
    shutil.move(str(tiny_hf), moved)
    try:
        p = luban.load(run)
        texts = [s for s, _ in reversal_pairs(300, seed=5)[:4]]
        assert len(p.predict(texts)) == 4
        test = write_pairs(tmp_path / "test.tsv", reversal_pairs(300, seed=5)[-30:])
        assert p.evaluate(test)["bleu"] >= 0.0
        # greedy decoding through luban's loop equals Hugging Face's generate on the same weights
        impl = p.task_predictor
        ids = impl.sides.encode_sources(texts)
        ours, _ = impl.decode_ids(impl.model, ids, impl.settings({"num_beams": 1, "max_new_tokens": 6}))
        hf = impl.model.hf
        for src, mine in zip(ids, ours):
            out = hf.generate(torch.tensor([src]), num_beams=1, do_sample=False, max_new_tokens=6, min_new_tokens=1,
                              suppress_tokens=[0])
            theirs = [t for t in out[0, 1:].tolist() if t not in (0, 2)]  # drop eos and padding after it
            assert mine == theirs
    finally:
        shutil.move(str(moved), tiny_hf)


# ----------------------------------------------------------------------------------------------- bad input


def test_missing_columns_config(out_dir, tmp_path):
    train = write_pairs(tmp_path / "p.tsv", reversal_pairs(20, seed=1))
    cfg = reversal_config(out_dir, train, "bad")
    cfg["data"]["columns"] = {"source": "source"}
    with pytest.raises(ConfigError, match="data.columns.target"):
        luban.train(cfg, quiet=True)
    assert_no_run(out_dir, "bad")


def test_missing_source_column_names_the_file(out_dir, tmp_path):
    train = write_pairs(tmp_path / "p.tsv", reversal_pairs(20, seed=1), header=("src", "target"))
    with pytest.raises(DataError, match=r"p\.tsv: data\.columns\.source: column 'source' not found"):
        luban.train(reversal_config(out_dir, train, "bad"), quiet=True)
    assert_no_run(out_dir, "bad")


def test_empty_target_names_file_line_and_field(out_dir, tmp_path):
    pairs = reversal_pairs(20, seed=1)
    pairs[4] = (pairs[4][0], " ")
    train = write_pairs(tmp_path / "p.tsv", pairs)
    cfg = reversal_config(out_dir, train, "bad", data={"clean": {"drop_missing_label": False}})
    with pytest.raises(DataError, match=r"p\.tsv: line 6: field 'target': empty target"):
        luban.train(cfg, quiet=True)
    assert_no_run(out_dir, "bad")
    cfg = reversal_config(out_dir, train, "bad", data={"clean": {"drop_empty": False}})
    pairs[4] = ("", "1 2")
    write_pairs(train, pairs)
    with pytest.raises(DataError, match=r"line 6: field 'source': empty source"):
        luban.train(cfg, quiet=True)


def test_empty_rows_are_dropped_by_default_with_an_account(tmp_path):
    from luban.config import validate
    from luban.tasks.base import read_frames
    from luban.tasks.seq2seq import Seq2SeqTask

    pairs = reversal_pairs(40, seed=2)
    pairs[3] = (pairs[3][0], "")
    pairs[7] = ("", "1")
    train = write_pairs(tmp_path / "p.tsv", pairs)
    cfg = validate(reversal_config(tmp_path / "runs", train, "x"))
    task = Seq2SeqTask(cfg)
    task.prepare(read_frames(cfg))
    assert task.cleaning[0]["dropped"] == {"empty source": 1, "empty target": 1}
    assert sum(len(d) for d in task.data.values()) == 38


def test_bad_model_options(out_dir, tmp_path):
    train = write_pairs(tmp_path / "p.tsv", reversal_pairs(20, seed=1))
    cfg = reversal_config(out_dir, train, "bad", model={"shared_vocabulary": False, "copy_source": True})
    with pytest.raises(ConfigError, match="copy_source"):
        luban.train(cfg, quiet=True)
    cfg = reversal_config(out_dir, train, "bad")
    cfg["model"] = {"type": "pretrained_seq2seq", "path": str(tmp_path / "nowhere")}
    cfg["preprocessing"] = {}
    with pytest.raises(ConfigError, match="allow_download"):
        luban.train(cfg, quiet=True)
    assert_no_run(out_dir, "bad")
