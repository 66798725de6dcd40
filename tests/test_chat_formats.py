"""Instruction data layouts: Alpaca and ShareGPT (and OpenAI messages) read into conversations, auto-detected from
the fields or named by data.formatting, trained with LoRA on a tiny chat model; bad rows named by file, line and
field; and a smoke test on the real SmolLM2 when the model cache holds it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_no_run, deep_update, write_jsonl

import luban
from luban.cli import main
from luban.data.chat_formats import detect, resolve, to_canonical
from luban.data.readers import LINE
from luban.errors import DataError

QA = [("name a fruit", "apple"), ("translate cat", "chat"), ("hello", "world")]


def frame(rows: list[dict]) -> pd.DataFrame:
    f = pd.DataFrame(rows)
    f.insert(0, LINE, range(1, len(rows) + 1))
    f.attrs["source"] = "d.jsonl"
    return f


def test_alpaca_and_sharegpt_rows_become_the_same_conversations():
    alpaca = frame([{"instruction": "translate", "input": "cat", "output": "chat", "system": "be brief",
                     "history": [["hi", "hello"]]}])
    msgs = to_canonical(alpaca, "alpaca")["messages"][0]
    assert msgs == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "translate\n\ncat"},
                    {"role": "assistant", "content": "chat"}]
    share = frame([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                      {"from": "human", "value": "translate\n\ncat"}, {"from": "gpt", "value": "chat"}],
                    "system": "be brief"}])
    assert to_canonical(share, "sharegpt")["messages"][0] == msgs
    openai = frame([{"messages": json.dumps(msgs)}])  # the role/content variant, as JSON text
    assert to_canonical(openai, "sharegpt")["messages"][0] == msgs
    pref = to_canonical(frame([{"conversations": [{"from": "human", "value": "q"}],
                                "chosen": {"from": "gpt", "value": "good"}, "rejected": "bad"}]), "sharegpt")
    assert (pref["chosen"][0], pref["rejected"][0], pref["messages"][0][-1]["role"]) == ("good", "bad", "user")
    assert detect(["instruction", "input", "output"]) == "alpaca"
    assert detect(["conversations"]) == detect(["messages"]) == "sharegpt"
    assert detect(["prompt", "response"]) is None
    roles = dict.fromkeys(("prompt", "response", "messages", "chosen", "rejected"))
    layout, cols = resolve("auto", roles, frame([{"prompt": "q", "response": "a"}]))
    assert (layout, cols["prompt"], cols["response"], cols["chosen"]) == ("columns", "prompt", "response", None)
    with pytest.raises(DataError, match="cannot tell the data layout"):
        resolve("auto", roles, frame([{"question": "q", "answer": "a"}]))


@pytest.mark.parametrize("layout,row,message", [
    ("sharegpt", {"conversations": [{"from": "bot", "value": "x"}]}, "line 1: field 'conversations': turn 1: "
                                                                      "unknown role 'bot'"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]},
     "line 1: field 'conversations': turn 2: empty text"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"},
                                    {"from": "gpt", "value": "a"}]},
     "line 1: field 'conversations': turn 2 is 'user' where 'assistant' was expected"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}]},
     "line 1: field 'conversations': the conversation must end with an assistant turn"),
    ("alpaca", {"instruction": "", "output": "a"}, "line 1: field 'instruction': empty text"),
    ("alpaca", {"instruction": "q", "output": None}, "line 1: field 'output': missing text"),
    ("alpaca", {"instruction": "q", "output": "a", "history": [["only one"]]}, "line 1: field 'history': item 1: expected"),
])
def test_bad_rows_name_the_file_line_and_field(layout, row, message):
    with pytest.raises(DataError, match="d.jsonl: " + message.replace("(", r"\(")):
        to_canonical(frame([row]), layout)


def lora_config(out_dir, model_dir, train, **extra):
    cfg = {
        "task": "text_generation", "seed": 0, "data": {"train": str(train)},
        "model": {"type": "pretrained_lm", "path": str(model_dir), "finetune": "lora",
                  "lora": {"r": 8, "alpha": 16, "target_modules": "all-linear"}},
        "trainer": {"epochs": 30, "batch_size": 8, "lr": 3e-2, "num_threads": 1, "precision": "fp32",
                    "scheduler": "constant", "weight_decay": 0.0},
        "generation": {"sample_tokens": 0},
        "output": {"dir": str(out_dir), "name": "fmt", "tensorboard": False},
    }
    return deep_update(cfg, extra)


def test_alpaca_and_sharegpt_files_train_lora_auto_detected(tiny_llama_chat, tmp_path):
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": q, "input": "", "output": a} for q, a in QA] * 10)
    run = luban.train(lora_config(tmp_path / "runs", tiny_llama_chat, alpaca), quiet=True)  # no columns: detected
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["unit"] == "examples" and m["test"]["loss"] < 0.5 * m["baseline"]["test"]["loss"]
    p = luban.load(run)
    assert p.chat([{"role": "user", "content": "translate cat"}], temperature=0, max_new_tokens=6)["text"] == "chat"
    # evaluate reads a file of the same layout
    assert p.evaluate(alpaca)["loss"] < 0.5 * m["baseline"]["test"]["loss"]

    share = write_jsonl(tmp_path / "share.json", [{"conversations": [{"from": "human", "value": q},
                                                                     {"from": "gpt", "value": a}]}
                                                  for q, a in QA] * 10)
    run2 = luban.train(lora_config(tmp_path / "runs", tiny_llama_chat, share, data={"formatting": "sharegpt"},
                                   output={"name": "share"}), quiet=True)
    p2 = luban.load(run2)
    assert p2.chat([{"role": "user", "content": "name a fruit"}], temperature=0, max_new_tokens=6)["text"] == "apple"


def test_sharegpt_preference_rows_train_dpo(tiny_llama_chat, tmp_path):
    rows = [{"conversations": [{"from": "human", "value": q}], "chosen": {"from": "gpt", "value": a},
             "rejected": {"from": "gpt", "value": "no"}} for q, a in QA] * 8
    data = write_jsonl(tmp_path / "pref.jsonl", rows)
    run = luban.train(lora_config(tmp_path / "runs", tiny_llama_chat, data, trainer={"epochs": 3, "lr": 1e-2}),
                      quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["unit"] == "pairs" and m["test"]["reward_accuracy"] >= 0.5


def test_bad_formatted_file_is_one_clear_error_and_no_run(tiny_llama_chat, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
                    + "\n" + json.dumps({"conversations": [{"from": "human", "value": "q"},
                                                           {"from": "robot", "value": "a"}]}) + "\n",
                    encoding="utf-8")
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(lora_config(tmp_path / "runs", tiny_llama_chat, data)), encoding="utf-8")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: line 2: field 'conversations': turn 2: unknown role 'robot'" in err
    assert "Traceback" not in err
    assert_no_run(tmp_path / "runs", "fmt")
    cfg.write_text(yaml.safe_dump(lora_config(tmp_path / "runs", tiny_llama_chat, data, data={
        "formatting": "alpaca", "columns": {"prompt": "q", "response": "a"}})), encoding="utf-8")
    assert main(["train", str(cfg)]) == 2
    assert "data.formatting: alpaca data has its own fields" in capsys.readouterr().err


def _smollm2() -> Path | None:
    base = Path(os.environ.get("LUBAN_CACHE", Path.home() / ".cache" / "luban" / "models")) / "starter-smollm2"
    return base if (base / "config.json").is_file() and (base / "model.safetensors").is_file() else None


@pytest.mark.skipif(_smollm2() is None, reason="starter-smollm2 is not in the model cache (luban models pull)")
def test_real_smollm2_alpaca_lora_smoke(tmp_path):
    rows = [{"instruction": "Is this review positive or negative? Answer with one word.", "input": text,
             "output": label} for text, label in [("a wonderful, moving film", "positive"),
                                                  ("dull and far too long", "negative")] * 4]
    data = write_jsonl(tmp_path / "a.jsonl", rows)
    run = luban.train(lora_config(tmp_path / "runs", _smollm2(), data, trainer={"epochs": 1, "lr": 1e-4},
                                  model={"lora": {"target_modules": None}},
                                  preprocessing={"tokenizer": {"max_length": 96}}), quiet=True)
    p = luban.load(run)
    r = p.chat([{"role": "user", "content": "What is the capital of France? One word."}], temperature=0,
               max_new_tokens=8)
    assert "Paris" in r["text"]
