"""Shared fixtures: small synthetic datasets written into tmp_path, tiny configs, and one trained text run.

Everything here is offline and small enough that the whole suite runs in a few minutes on two CPU cores.
"""

from __future__ import annotations

import copy
import csv
import gc
import json
import os
import random
from pathlib import Path

import pytest

# The test machine's cores are shared: more than one intra-op / OpenMP thread makes tiny models much slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ZH_NOUNS = ["手机", "酒店", "服务", "电影", "餐厅", "衣服", "电脑", "房间", "质量", "价格", "快递", "屏幕"]
ZH_ADVERBS = ["很", "非常", "真", "特别", "十分", "挺"]
ZH_PREFIX = ["这个", "那个", "我的", "他们的", "今天的"]
ZH_SUFFIX = ["", "啊", "呢", "了", "吧"]
ZH_WORD = {"positive": "好", "negative": "差"}

EN_NOUNS = ["phone", "hotel", "service", "movie", "restaurant", "shirt", "laptop", "room", "quality", "price",
            "delivery", "screen"]
EN_ADVERBS = ["very", "really", "quite", "truly", "so", "pretty"]
EN_PREFIX = ["the", "this", "that", "my", "their"]
EN_SUFFIX = ["", "today", "again", "overall", "indeed"]
EN_WORD = {"positive": "good", "negative": "bad"}


def zh_sentences(n_per_label: int, seed: int = 0) -> list[tuple[str, str]]:
    """Distinct Chinese sentences whose label is decided by 好 (positive) or 差 (negative) alone."""
    rng = random.Random(seed)
    rows = []
    for label, word in ZH_WORD.items():
        combos = [p + n + a + word + s for p in ZH_PREFIX for n in ZH_NOUNS for a in ZH_ADVERBS for s in ZH_SUFFIX]
        rows += [(t, label) for t in rng.sample(combos, n_per_label)]
    rng.shuffle(rows)
    return rows


def en_sentences(n_per_label: int, seed: int = 0) -> list[tuple[str, str]]:
    """Distinct English sentences whose label is decided by good / bad alone."""
    rng = random.Random(seed)
    rows = []
    for label, word in EN_WORD.items():
        combos = [f"{p} {n} was {a} {word} {s}".strip() for p in EN_PREFIX for n in EN_NOUNS for a in EN_ADVERBS
                  for s in EN_SUFFIX]
        rows += [(t, label) for t in rng.sample(combos, n_per_label)]
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def text_config(out_dir: Path, name: str, train: Path, **extra) -> dict:
    """A tiny text-classification config: char tokens, small TextCNN, 3 epochs, no baseline."""
    cfg = {
        "task": "text_classification",
        "seed": 7,
        "data": {"train": str(train), "columns": {"text": "text", "label": "label"}},
        "preprocessing": {"tokenizer": {"type": "char", "max_length": 64}},
        "model": {"type": "textcnn", "embedding_dim": 16, "num_filters": 16, "kernel_sizes": [1, 2], "dropout": 0.1},
        "trainer": {"epochs": 3, "batch_size": 16, "lr": 0.01, "weight_decay": 0.0, "num_threads": 1,
                    "precision": "fp32", "device": "cpu", "log_every": 1000},
        "evaluation": {"baseline": False, "worst_examples": 5},
        "output": {"dir": str(out_dir), "name": name, "tensorboard": False},
    }
    return deep_update(cfg, extra)


def tabular_config(out_dir: Path, name: str, task: str, data: dict, **extra) -> dict:
    cfg = {
        "task": task,
        "seed": 3,
        "data": data,
        "model": {"type": "mlp", "hidden_sizes": [32], "dropout": 0.0},
        "trainer": {"epochs": 20, "batch_size": 32, "lr": 0.01, "weight_decay": 0.0, "num_threads": 1,
                    "precision": "fp32", "device": "cpu", "scheduler": "constant"},
        "evaluation": {"baseline": False},
        "output": {"dir": str(out_dir), "name": name, "tensorboard": False},
    }
    return deep_update(cfg, extra)


def speech_config(out_dir: Path, name: str, train: Path, **extra) -> dict:
    """A small CTC speech-recognition config on an 8 kHz manifest (`train` also validates and tests)."""
    cfg = {
        "task": "speech_recognition", "seed": 0,
        "data": {"train": str(train), "validation": str(train), "test": str(train),
                 "columns": {"audio": "audio", "text": "text"}},
        "preprocessing": {"audio": {"sample_rate": 8000, "n_mels": 24,
                                    "augment": {"speed": None, "freq_masks": 0, "time_masks": 0}}},
        "model": {"type": "ctc", "conv_channels": 8, "hidden_size": 32, "num_layers": 1, "dropout": 0.0},
        "trainer": {"epochs": 25, "batch_size": 8, "lr": 1e-2, "num_threads": 1, "precision": "fp32",
                    "scheduler": "constant", "weight_decay": 0.0},
        "evaluation": {"baseline": True},
        "output": {"dir": str(out_dir), "name": name, "tensorboard": False},
    }
    return deep_update(cfg, extra)


def assert_run_layout(run: Path) -> dict:
    """A finished run's versioned layout (issue 18): manifest.json listing its files, and the task's fitted state
    as one model/processor.json (+ the assets it names, all present), no per-part metadata files beside it.
    Returns processor.json's parts."""
    from luban.processor import LEGACY

    run = Path(run)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format"] >= 1, manifest
    listed = {f["path"] for f in manifest["files"]}
    assert "model/processor.json" in listed and "metrics.json" in listed, sorted(listed)
    doc = json.loads((run / "model" / "processor.json").read_text(encoding="utf-8"))
    assert doc["task"] == manifest["task"] and doc["format"] >= 1
    for asset in doc["assets"]:
        assert (run / "model" / asset).exists(), f"processor.json names {asset}, which the run does not have"
    for name, files in LEGACY.items():
        for f in files:
            assert not (run / "model" / f).exists(), f"model/{f} beside processor.json ({name} belongs in it)"
    return doc["parts"]


@pytest.fixture(autouse=True, scope="session")
def every_finished_run_is_checked():
    """Every luban run finished in this session (train, compress, distill: each task's tests train theirs) is
    checked with assert_run_layout as it finishes; an ensemble's fitted state is its members'."""
    from luban.rundir import RunDir

    finish = RunDir.finish

    def checked(self, **manifest):
        out = finish(self, **manifest)
        written = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        if written["task"] and manifest.get("kind") != "ensemble":  # (not a RunDir test's fake run)
            assert_run_layout(out)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunDir, "finish", checked)
        yield


def pytest_collection_finish(session):
    """Keep what is alive after collection (torch, pandas, ... and the test modules) out of the garbage collector's
    full scans: with ~300k long-lived objects each full collection costs 0.2-0.5 s of CPU, and training, `luban
    tune` (gc_after_trial) and the server trigger hundreds of them over the suite."""
    gc.collect()
    gc.freeze()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """The same after each test: its garbage is collected, and what survives it (modules imported on first use,
    module and session fixtures, caches) is frozen too, so that a full collection scans one test's objects."""
    gc.collect()
    gc.freeze()


def assert_no_run(out_dir: Path, name: str) -> None:
    """Neither a finished run nor a partial one was left behind."""
    assert not (Path(out_dir) / name).exists(), f"a run dir {name}/ was left behind"
    assert not (Path(out_dir) / (name + ".partial")).exists(), f"a partial run dir {name}.partial/ was left behind"


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (small models decode faster and deterministically so), then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def zh_data(tmp_path) -> dict:
    """Chinese 好/差 sentiment: train.csv (200 rows) and a disjoint-seeded test.csv (60 rows)."""
    rows = zh_sentences(130, seed=1)
    train, test = rows[:200], rows[200:260]
    return {"train": write_csv(tmp_path / "zh_train.csv", train),
            "test": write_csv(tmp_path / "zh_test.csv", test), "rows": rows}


@pytest.fixture
def en_data(tmp_path) -> dict:
    rows = en_sentences(120, seed=2)
    return {"train": write_csv(tmp_path / "en_train.csv", rows[:200]),
            "test": write_csv(tmp_path / "en_test.csv", rows[200:240]), "rows": rows}


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def trained_text_run(tmp_path_factory) -> dict:
    """One trained Chinese sentiment run shared by the predict / evaluate / CLI tests (read-only: copy it
    before modifying)."""
    import luban

    root = tmp_path_factory.mktemp("shared_run")
    rows = zh_sentences(130, seed=11)
    train = write_csv(root / "train.csv", rows[:200])
    test = write_csv(root / "test.csv", rows[200:260])
    cfg = text_config(root / "runs", "zh", train, data={"test": str(test)})
    run = luban.train(cfg, quiet=True)
    return {"run": run, "train": train, "test": test, "root": root,
            "metrics": json.loads((run / "metrics.json").read_text(encoding="utf-8"))}


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT + WordPiece tokenizer saved as a local HF folder (no download)."""
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = sorted({w for t, _ in en_sentences(120, seed=2) for w in t.split()})
    chars = sorted({c for t, _ in zh_sentences(130, seed=1) for c in t})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + chars + ["##s", "##ing"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # from_pretrained on a folder holding only vocab.txt works across transformers versions (the constructor's
    # argument is vocab_file in 4.x and vocab in 5.x)
    tok = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)
    assert tok.convert_ids_to_tokens(tok("good")["input_ids"]) == ["[CLS]", "good", "[SEP]"]
    import torch

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def _byte_bpe(texts: list[str], specials: list[str], vocab: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


CHAT_TEXTS = ["the cat sat on the mat", "hello world", "what is the colour of the sky? blue",
              "name a fruit: apple", "translate cat: chat", "你好世界"] * 5


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A tiny random GPT-2 + byte-level BPE tokenizer (no chat template) saved as a local HF folder."""
    transformers = pytest.importorskip("transformers")
    import torch

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(CHAT_TEXTS, ["<|endoftext|>"]),
                                               eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    conf = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                   bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    transformers.GPT2LMHeadModel(conf).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_llama_chat(tmp_path_factory) -> Path:
    """A tiny random LLaMA whose tokenizer has a ChatML-style chat template."""
    transformers = pytest.importorskip("transformers")
    import torch

    folder = tmp_path_factory.mktemp("tiny_llama")
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(CHAT_TEXTS, ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]),
        bos_token="<s>", eos_token="<|im_end|>")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    conf = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                    initializer_range=0.5)  # a peaked output head, like a trained model's
    transformers.LlamaForCausalLM(conf).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
