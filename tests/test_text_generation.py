"""Text generation end to end: GPT pretraining on a corpus, SFT with masked prompts, HF causal LMs with LoRA,
chat templates, the predictor, the CLI, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_no_run, deep_update, write_jsonl

import luban
from luban.cli import main
from luban.errors import ConfigError, DataError, LubanError

# Word order matters here: after "the" comes "cat" or "mat" depending on what came before, which a bigram model
# cannot know and a GPT with context can.
CORPUS = "the cat sat on the mat. " * 60


def lm_config(out_dir: Path, name: str, train: Path, **extra) -> dict:
    cfg = {
        "task": "text_generation", "seed": 1,
        "data": {"train": str(train)},
        "preprocessing": {"tokenizer": {"type": "char"}},
        "model": {"type": "gpt", "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "trainer": {"epochs": 4, "steps_per_epoch": 40, "batch_size": 16, "lr": 3e-3, "num_threads": 1,
                    "precision": "fp32", "scheduler": "constant", "weight_decay": 0.0},
        "generation": {"sample_prompts": ["the cat"], "sample_tokens": 20},
        "output": {"dir": str(out_dir), "name": name, "tensorboard": False},
    }
    return deep_update(cfg, extra)


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    train = root / "corpus.txt"
    train.write_text(CORPUS, encoding="utf-8")
    run = luban.train(lm_config(root / "runs", "lm", train), quiet=True)
    return {"run": run, "root": root, "train": train,
            "metrics": json.loads((run / "metrics.json").read_text(encoding="utf-8"))}


def test_gpt_pretraining_learns_beyond_bigrams_and_reports(corpus_run):
    m = corpus_run["metrics"]
    assert m["main_metric"] == "loss"
    # carved from the end of the one file: 80 / 10 / 10 of the characters
    assert m["data"]["splits"]["train"] > 7 * m["data"]["splits"]["validation"]
    assert m["test"]["loss"] < 0.1 < m["baseline"]["test"]["loss"]
    assert m["test"]["perplexity"] == pytest.approx(2.718281828 ** m["test"]["loss"], rel=1e-6)
    history = [json.loads(x) for x in (corpus_run["run"] / "history.jsonl").read_text().splitlines()]
    assert len(history) == 4 and all(h["val_samples"][0]["prompt"] == "the cat" for h in history)
    assert history[-1]["val_generation_tokens_per_s"] > 0
    report = (corpus_run["run"] / "report.html").read_text(encoding="utf-8")
    assert "Samples at each evaluation" in report and "the cat" in report


def test_predictor_generates_the_learned_continuation(corpus_run):
    p = luban.load(corpus_run["run"])
    r = p.generate_text("the cat", temperature=0, max_new_tokens=16)
    assert r["text"] == " sat on the mat. "[:16] and r["finish_reason"] == "length" and r["tokens"] == 16
    assert "".join(p.stream_text("the cat", temperature=0, max_new_tokens=16)) == r["text"]
    stopped = p.generate_text("the cat", temperature=0, max_new_tokens=30, stop=["mat"])
    assert stopped == {**stopped, "text": " sat on the ", "finish_reason": "stop"}
    a = p.generate_text("the", temperature=1.5, seed=5, max_new_tokens=20)["text"]
    assert a == p.generate_text("the", temperature=1.5, seed=5, max_new_tokens=20)["text"]
    beams = p.generate_text("the cat", num_beams=3, max_new_tokens=16)
    assert beams["text"] == r["text"]
    with pytest.raises(LubanError, match="unknown generation setting"):
        p.generate_text("the", temprature=0.5)
    ev = p.evaluate(corpus_run["train"])
    assert ev["loss"] < 0.1 and ev["tokens"] == len(CORPUS) - 1


def test_cli_generate_plain_stream_and_json(corpus_run, capsys):
    run = str(corpus_run["run"])
    assert main(["generate", run, "--prompt", "the cat", "--temperature", "0", "--max-new-tokens", "8"]) in (0, None)
    assert capsys.readouterr().out.strip() == "the cat sat on"
    main(["generate", run, "--prompt", "the cat", "--greedy", "--max-new-tokens", "8", "--stream"])
    assert capsys.readouterr().out.strip() == "sat on"
    main(["generate", run, "--prompt", "on", "--greedy", "--max-new-tokens", "5", "--json"])
    row = json.loads(capsys.readouterr().out)
    assert row["prompt"] == "on" and row["text"] == " the " and row["tokens"] == 5
    assert main(["generate", run, "--prompt", "x", "--top-p", "1.5"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_gpt_from_scratch_exports_as_hf_gpt2_that_transformers_runs(corpus_run, tmp_path, capsys):
    """`luban export --format hf`: the char GPT becomes a GPT-2 folder; transformers' own model and tokenizer,
    loaded from it offline, give the same greedy continuation as luban."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = Path(shutil.copytree(corpus_run["run"], tmp_path / "lm"))
    assert main(["export", str(run), "--format", "hf"]) in (0, None)
    out = capsys.readouterr().out
    assert "Hugging Face layout" in out and "tokenizer ids equal" in out
    hf_dir = run / "model" / "hf"
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    assert type(model).__name__ == "GPT2LMHeadModel"
    ids = tok("the cat", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    assert text == luban.load(run).generate_text("the cat", temperature=0, max_new_tokens=16)["text"]
    assert text == " sat on the mat. "[:16]


def test_hf_export_of_rope_bpe_and_what_has_no_counterpart(tmp_path):
    """A RoPE GPT with a byte-level BPE and no biases exports as GPT-NeoX (its heads' channels reordered for
    rotate-half) with the BPE as is; a jieba vocabulary has no HF tokenizer and leaves nothing behind."""
    from transformers import AutoModelForCausalLM

    from luban.compress.export import export_hf_run

    train = tmp_path / "t.txt"
    train.write_text(CORPUS, encoding="utf-8")
    run = luban.train(lm_config(tmp_path / "runs", "w", train, preprocessing={"tokenizer": {"type": "jieba"}},
                                trainer={"epochs": 1, "steps_per_epoch": 2}), quiet=True)
    with pytest.raises(LubanError, match="a jieba tokenizer has no Hugging Face counterpart"):
        export_hf_run(run, quiet=True)
    assert not (run / "model" / "hf").exists() and not (run / "model" / ".hf.tmp").exists()
    bpe = luban.train(lm_config(tmp_path / "runs", "b", train, trainer={"epochs": 1, "steps_per_epoch": 2},
                                preprocessing={"tokenizer": {"type": "byte_bpe", "vocab_size": 300}},
                                model={"bias": False, "tie_weights": False, "positions": "rope"}), quiet=True)
    meta = export_hf_run(bpe, quiet=True)
    assert meta["parity"]["tokenizer_ids_equal"] and meta["parity"]["decoded_equal"]
    assert meta["parity"]["max_abs_diff"] < 1e-4  # logits on sequences up to the whole window
    hf = AutoModelForCausalLM.from_pretrained(str(bpe / "model" / "hf"), local_files_only=True)
    assert type(hf).__name__ == "GPTNeoXForCausalLM"


def test_byte_bpe_corpus_folder_and_rope(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(12):
        (folder / f"doc{i:02d}.txt").write_text(f"第{i}章。" + "天气很好，我们去公园。" * 20, encoding="utf-8")
    cfg = lm_config(tmp_path / "runs", "bpe", folder,
                    preprocessing={"tokenizer": {"type": "byte_bpe", "vocab_size": 300}},
                    model={"positions": "rope"}, generation={"sample_prompts": ["天气"]},
                    trainer={"epochs": 6})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["unit"] == "tokens" and m["test"]["loss"] < m["baseline"]["test"]["loss"]
    text = luban.load(run).generate_text("天气", temperature=0, max_new_tokens=12)["text"]
    assert "很好" in text  # byte-level pieces decode back to whole characters


SFT = [{"prompt": f"Q: colour of {thing}?\nA:", "response": f" {colour}"}
       for thing, colour in [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
                             ("blood", "red"), ("sun", "yellow")]] * 8


def test_sft_masks_the_prompt_and_learns_responses(tmp_path):
    from luban.config import TokenizerConfig
    from luban.data.chat import IGNORE, ChatFormatter
    from luban.data.tokenizers import BOS, EOS, build_encoder

    enc = build_encoder(TokenizerConfig(type="char"), specials=(BOS, EOS)).fit(["Q: A: abc"])
    ids, labels = ChatFormatter(enc).encode_pair("Q: a", "bc")
    assert ids == enc.encode_text("Q: abc") + [enc.eos_id]
    assert labels == [IGNORE] * 4 + enc.encode_text("bc") + [enc.eos_id]

    data = write_jsonl(tmp_path / "sft.jsonl", SFT)
    cfg = lm_config(tmp_path / "runs", "sft", data, data={"columns": {"prompt": "prompt", "response": "response"}},
                    model={"block_size": 48}, trainer={"epochs": 30, "steps_per_epoch": None, "batch_size": 8},
                    generation={"sample_prompts": []})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["unit"] == "examples" and m["test"]["loss"] < 0.2
    assert m["data"]["samples_per_second_counts"].startswith("tokens read")
    out = luban.load(run).predict(["Q: colour of snow?\nA:", "Q: colour of sun?\nA:"], temperature=0)
    assert [o["text"] for o in out] == [" white", " yellow"] and all(o["finish_reason"] == "eos" for o in out)


def test_sft_batches_weight_the_loss_by_reply_tokens_and_count_every_token_read():
    """An SFT batch's loss is per reply token (size); its throughput counts the prompt and template it reads too."""
    from luban.data.chat import IGNORE, Example
    from luban.tasks.text_generation import sft_batches

    examples = [Example(ids=list(range(10)), labels=[IGNORE] * 8 + [8, 9], line=1),
                Example(ids=list(range(6)), labels=[IGNORE] * 5 + [5], line=2)]
    batch = next(iter(sft_batches(examples, batch_size=2, pad_id=0, seed=0, epoch=0, shuffle=False)))
    assert (batch["size"], batch["processed"]) == (3, 16)


def test_hf_lora_trains_only_adapters_and_merges_to_equal_outputs(tiny_gpt2):
    from safetensors.torch import load_file

    from luban.models.causal_lm_config import LoraConfig
    from luban.models.causal_lm import CausalLM, add_lora, load_hf_causal_lm

    base_before = load_file(str(tiny_gpt2 / "model.safetensors"))
    model = CausalLM(add_lora(load_hf_causal_lm(str(tiny_gpt2)), LoraConfig(r=4)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 200, (4, 12))
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, model.base_config.vocab_size),
                                                 x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    base = model.model.get_base_model()
    for key, before in base_before.items():  # frozen base weights did not move
        name = key.replace("c_attn.", "c_attn.base_layer.")
        assert torch.equal(base.state_dict()[name], before), key
    model.eval()
    with torch.no_grad():
        adapted = model(x)
        merged = model.merged()(input_ids=x).logits
        assert not torch.allclose(adapted, load_hf_causal_lm(str(tiny_gpt2))(input_ids=x).logits, atol=1e-4)
        assert torch.allclose(adapted, merged, atol=1e-5)


def hf_config(out_dir, name, model_dir, train, **extra):
    cfg = {
        "task": "text_generation", "seed": 0,
        "data": {"train": str(train)},
        "model": {"type": "pretrained_lm", "path": str(model_dir), "finetune": "lora", "lora": {"r": 8, "alpha": 16}},
        "trainer": {"epochs": 3, "batch_size": 8, "lr": 2e-2, "num_threads": 1, "precision": "fp32",
                    "scheduler": "constant", "weight_decay": 0.0},
        "generation": {"sample_tokens": 8},
        "output": {"dir": str(out_dir), "name": name, "tensorboard": False},
    }
    return deep_update(cfg, extra)


def test_hf_chat_sft_with_template_lora_merged_run(tiny_llama_chat, tmp_path):
    from luban.config import TokenizerConfig
    from luban.data.chat import IGNORE, ChatFormatter
    from luban.data.tokenizers import build_encoder

    enc = build_encoder(TokenizerConfig(type="pretrained"), str(tiny_llama_chat))
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hello world"}]
    ids, labels = ChatFormatter(enc).encode_chat(chat)
    trained = enc.tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE])
    assert trained == "hello world<|im_end|>\n"  # only the assistant turn (and its end marker)

    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in [("name a fruit", "apple"), ("translate cat", "chat"), ("hello", "world")]] * 10
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    run = luban.train(hf_config(tmp_path / "runs", "chat", tiny_llama_chat, data, trainer={"epochs": 30, "lr": 3e-2},
                                model={"lora": {"target_modules": "all-linear"}},
                                data={"columns": {"messages": "messages"}}), quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["baseline"]["name"].startswith("the pretrained model")
    assert m["test"]["loss"] < 0.5 * m["baseline"]["test"]["loss"]
    assert m["parameters"]["trainable"] < m["parameters"]["total"] / 5
    hf_dir = run / "model" / "hf"
    assert (hf_dir / "model.safetensors").is_file() and not (hf_dir / "adapter").exists()  # merged, plain HF
    p = luban.load(run)
    reply = p.chat([{"role": "user", "content": "translate cat"}], temperature=0, max_new_tokens=6)
    assert reply["text"] == "chat" and reply["finish_reason"] == "eos"
    questions = ["name a fruit", "translate cat", "hello", "say something longer please"]
    together = p.predict([{"messages": [{"role": "user", "content": q}]} for q in questions], temperature=0,
                         max_new_tokens=6)  # one left-padded batch through LLaMA (rotary positions)
    alone = [p.chat([{"role": "user", "content": q}], temperature=0, max_new_tokens=6) for q in questions]
    assert [(r["text"], r["tokens"], r["finish_reason"]) for r in together] == \
        [(r["text"], r["tokens"], r["finish_reason"]) for r in alone]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(hf_dir))  # other tools load the export as is


def test_hf_full_finetune_corpus_and_unmerged_adapters(tiny_gpt2, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, the cat sat on the mat.\n" * 80, encoding="utf-8")
    full = luban.train(hf_config(tmp_path / "runs", "full", tiny_gpt2, corpus, model={"finetune": "full"},
                                 preprocessing={"tokenizer": {"max_length": 32}}), quiet=True)
    m = json.loads((full / "metrics.json").read_text(encoding="utf-8"))
    assert m["parameters"]["trainable"] == m["parameters"]["total"]
    assert m["test"]["loss"] < m["baseline"]["test"]["loss"]
    # QLoRA-style: frozen base weights held in bfloat16, adapters trained in float32, kept unmerged
    unmerged = luban.train(hf_config(tmp_path / "runs", "adapters", tiny_gpt2, corpus, trainer={"epochs": 1},
                                     model={"merge_adapters": False, "base_dtype": "bfloat16"},
                                     preprocessing={"tokenizer": {"max_length": 32}}), quiet=True)
    assert (unmerged / "model" / "hf" / "adapter" / "adapter_config.json").is_file()
    with pytest.raises(ConfigError, match="bfloat16 base weights"):
        luban.train(hf_config(tmp_path / "runs", "bad", tiny_gpt2, corpus,
                              model={"finetune": "full", "base_dtype": "bfloat16"}), quiet=True)
    r = luban.load(unmerged).generate_text("hello", temperature=0, max_new_tokens=4)
    assert r["tokens"] == 4
    assert [x["tokens"] for x in luban.load(unmerged).predict(["hello", "the cat sat", "mat"], max_new_tokens=4,
                                                               seed=1)] == [4, 4, 4]  # PEFT + bf16 base, batched
    frozen = luban.train(hf_config(tmp_path / "runs", "none", tiny_gpt2, corpus, model={"finetune": "none"},
                                   preprocessing={"tokenizer": {"max_length": 32}}), quiet=True)
    fm = json.loads((frozen / "metrics.json").read_text(encoding="utf-8"))
    assert fm["epochs_run"] == 0 and fm["test"]["loss"] == pytest.approx(fm["baseline"]["test"]["loss"], rel=1e-5)


def test_bad_text_generation_input(tmp_path):
    out = tmp_path / "runs"
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match="no text"):
        luban.train(lm_config(out, "e", empty), quiet=True)
    short = tmp_path / "short.txt"
    short.write_text("abc\n" * 12, encoding="utf-8")
    with pytest.raises(DataError, match="not longer than one context window"):
        luban.train(lm_config(out, "s", short, model={"block_size": 64}), quiet=True)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] * 20 +
                      [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(DataError, match=r"bad.jsonl: line 21: field 'messages': message 1"):
        luban.train(lm_config(out, "b", bad, data={"columns": {"messages": "messages"}}), quiet=True)
    with pytest.raises(ConfigError, match="both prompt and response"):
        luban.train(lm_config(out, "c", bad, data={"columns": {"prompt": "messages"}}), quiet=True)
    for name in ("e", "s", "b", "c"):
        assert_no_run(out, name)
