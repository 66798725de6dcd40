"""Weight-only quantization of causal LMs (luban compress --quantize int8-weight | int4-weight | bf16): logits close
to fp32, the safe format round-trips, a compressed run or HF folder generates and serves, and the refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from luban.errors import LubanError  # noqa: E402
from tests.conftest import CHAT_TEXTS, _byte_bpe  # noqa: E402


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    """A tiny random Qwen2 (tied embeddings, widths a multiple of the int4 group) with a chat template."""
    folder = tmp_path_factory.mktemp("tiny_qwen")
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(CHAT_TEXTS, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
        eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    conf = transformers.Qwen2Config(vocab_size=-(-len(tok) // 32) * 32, hidden_size=64, intermediate_size=128,
                                    num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                    tie_word_embeddings=True, eos_token_id=tok.eos_token_id, initializer_range=0.1)
    model = transformers.Qwen2ForCausalLM(conf)
    model.config.architectures = ["Qwen2ForCausalLM"]
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def _fp32(folder):
    from luban.models.causal_lm import load_hf_causal_lm

    return load_hf_causal_lm(str(folder)).eval()


@pytest.mark.parametrize("method,bound", [("int8-weight", 0.03), ("int4-weight", 0.35), ("bf16", 0.02)])
def test_quantized_logits_close_and_round_trip(tiny_qwen, tmp_path, method, bound):
    from luban.models.quantized_lm import QUANT_FILE, load_quantized, quant_info, save_quantized

    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = _fp32(tiny_qwen)(input_ids=ids).logits
        model = _fp32(tiny_qwen)
        info = save_quantized(model, tmp_path / "q", method, group_size=32)
        got = model(input_ids=ids).logits.float()
        back = load_quantized(tmp_path / "q", quant_info(tmp_path / "q"))(input_ids=ids).logits.float()
    rel = float((got - ref).norm() / ref.norm())
    assert rel < bound, f"{method}: relative logit error {rel:.4f}"
    # the saved form is what ran before saving (bf16: up to the rounding of a model built in bf16)
    assert float((back - got).norm() / got.norm()) < (1e-6 if method != "bf16" else 0.02)
    meta = json.loads((tmp_path / "q" / QUANT_FILE).read_text())
    assert meta["method"] == method == info["method"]
    if method != "bf16":
        kinds = {s["kind"] for s in meta["modules"].values()}
        assert kinds == ({"int8", "int8-embedding"} if method == "int8-weight" else {"int4", "int4-embedding"})
        if method == "int8-weight":  # the head uses the embedding's int8 rows
            assert meta["modules"]["lm_head"].get("tied_to") == "model.embed_tokens"
        else:  # the embedding looks its rows up in the int4 head
            assert meta["modules"]["model.embed_tokens"].get("tied_to") == "lm_head"
        assert not (tmp_path / "q" / "model.safetensors").exists()  # from_pretrained cannot mistake it
        from safetensors.torch import load_file

        dtypes = {str(t.dtype) for k, t in load_file(str(tmp_path / "q" / "quantized.safetensors")).items()
                  if k.endswith("qweight")}
        assert dtypes == ({"torch.int8"} if method == "int8-weight" else {"torch.uint8"})


def test_int4_packing_round_trips():
    from luban.models.quantized_lm import dequantize_int4, quantize_int4

    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    packed, scale, lo = quantize_int4(w, 16)
    assert packed.dtype == torch.uint8 and packed.shape == (64, 32)
    err = ((dequantize_int4(packed, scale, lo, 16) - w) ** 2).reshape(64, 4, 16).sum(-1)
    # the fitted grid is never worse than the plain min-max grid in any group, and clearly better overall
    g = w.reshape(64, 4, 16)
    mn, mx = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    step = (mx - mn) / 15
    minmax = ((torch.round((g - mn) / step) * step + mn - g) ** 2).sum(-1)
    assert bool((err <= minmax + 1e-6).all())
    assert float(err.sum()) < 0.9 * float(minmax.sum())
    flat = torch.full((2, 16), 0.5)  # a constant group: exact, no division by a zero range
    assert torch.allclose(dequantize_int4(*quantize_int4(flat, 16), 16), flat)
    from luban.models.quantized_lm import Int4Linear

    w = torch.randn(32, 64)  # the kernel computes with the dequantized weights, in bfloat16 (~0.3 % rounding)
    packed, scale, lo = quantize_int4(w, 32)
    x = torch.randn(3, 64)
    ref = x @ dequantize_int4(packed, scale, lo, 32).T
    y = Int4Linear(packed, scale, lo, 32)(x)
    assert y.dtype == torch.float32 and float((y - ref).norm() / ref.norm()) < 0.01


@pytest.mark.parametrize("rows", [96, 4096])
def test_int4_embedding_reads_the_heads_kernel_layout(rows):
    """Int4Embedding decodes torch's CPU int4 packing: every looked-up row equals the dequantized head row."""
    from luban.models.quantized_lm import Int4Embedding, Int4Linear, dequantize_int4, quantize_int4, unpack_int4

    w = torch.randn(rows, 128, generator=torch.Generator().manual_seed(rows))
    packed, scale, lo = quantize_int4(w, 32)
    head = Int4Linear(packed, scale, lo, 32)
    emb = Int4Embedding(head)
    assert emb.kernel_weight.data_ptr() == head.kernel_weight.data_ptr()  # shared, not a copy
    ids = torch.tensor([[0, 15, 16, 31, 32, rows - 1], [rows - 17, 5, 47, rows // 2, 1, 0]])
    # the head's 4-bit values with the head's (bfloat16) scales and zeros, w = (q - 8) * scale + zero
    sz = head.scales_zeros.float().transpose(0, 1)  # (rows, groups, 2)
    q = unpack_int4(packed).float().view(rows, -1, 32) - 8
    ref = (q * sz[..., 0:1] + sz[..., 1:2]).view(rows, 128)
    assert torch.equal(emb(ids), ref[ids])
    assert torch.equal(emb(torch.arange(rows)), ref)  # every row, both nibbles of every lane
    exact = dequantize_int4(packed, scale, lo, 32)  # and within bfloat16's rounding of the fp32 dequantization
    assert float((ref - exact).norm() / exact.norm()) < 0.01


@pytest.mark.parametrize("vocab,tied,kind", [(112, True, "int8-embedding"), (128, False, "int4-embedding"),
                                              (112, False, "int8-embedding")])
def test_embedding_kinds_round_trip(tmp_path, vocab, tied, kind):
    """A tied head of 32n rows lends its int4 rows; an untied embedding of 32n rows is int4 of its own; otherwise
    (112 rows: not the packing's block) int8 rows. Each saves and loads back to the same logits."""
    from luban.models.quantized_lm import load_quantized, quant_info, save_quantized

    torch.manual_seed(0)
    conf = transformers.Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = transformers.Qwen2ForCausalLM(conf).eval()
    ids = torch.randint(0, vocab, (1, 12))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        info = save_quantized(model, tmp_path / "q", "int4-weight", group_size=32)
        got = model(input_ids=ids).logits
        back = load_quantized(tmp_path / "q", quant_info(tmp_path / "q"))(input_ids=ids).logits
    modules = info["modules"]
    assert modules["model.embed_tokens"]["kind"] == kind
    assert modules["lm_head"]["kind"] == "int4" and "tied_to" not in modules["lm_head"]
    assert float((got - ref).norm() / ref.norm()) < 0.35
    assert torch.allclose(back, got, atol=1e-5)


def test_compress_hf_folder_generates_and_serves(tiny_qwen, tmp_path):
    import luban
    from luban.compress.llm import quantize_lm
    from luban.manifest import read as read_manifest

    run = quantize_lm(tiny_qwen, "int4-weight", out=tmp_path / "q4", group_size=32, quiet=True)
    assert (run / "manifest.json").is_file() and (run / "model" / "processor.json").is_file()
    files = {f["path"] for f in read_manifest(run)["files"]}
    assert "model/hf/quantized.safetensors" in files and "model/hf/luban_quant.json" in files
    proc = json.loads((run / "model" / "processor.json").read_text())
    assert proc["parts"]["model"]["quantization"]["method"] == "int4-weight"
    p = luban.load(run)
    out = p.generate_text("the cat", max_new_tokens=6, do_sample=False)
    assert out["tokens"] > 0
    chat = p.chat([{"role": "user", "content": "hello"}], max_new_tokens=4, do_sample=False)
    assert chat["finish_reason"] in ("eos", "length", "stop")
    # the same greedy tokens as the quantized HF model itself gives
    from luban.models.quantized_lm import load_quantized, quant_info

    hf = load_quantized(run / "model" / "hf", quant_info(run / "model" / "hf"))
    ids = p.task_predictor.generator._ids("the cat")  # the prompt as the run encodes it
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=None,
                      pad_token_id=0)[0, len(ids):].tolist()
    mine = list(p.task_predictor.generator.events("the cat", max_new_tokens=6, do_sample=False))
    assert [t for t, *_ in mine if t is not None] == ref[:len([t for t, *_ in mine if t is not None])]
    # served: the OpenAI completions route answers from the quantized run
    from fastapi.testclient import TestClient

    from luban.serve.app import create_app

    with TestClient(create_app([str(run)])) as client:
        r = client.post("/v1/completions", json={"model": run.name, "prompt": "the cat", "max_tokens": 4,
                                                 "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] > 0


def test_compress_text_generation_run(tiny_qwen, tmp_path):
    import luban
    from luban.compress.llm import quantize_lm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CHAT_TEXTS * 4), encoding="utf-8")
    src = luban.train({"task": "text_generation", "seed": 0, "data": {"train": str(corpus)},
                       "model": {"type": "pretrained_lm", "path": str(tiny_qwen), "finetune": "none"},
                       "preprocessing": {"tokenizer": {"type": "pretrained", "max_length": 32}},
                       "trainer": {"batch_size": 8, "num_threads": 1, "precision": "fp32"},
                       "evaluation": {"baseline": False}, "generation": {"sample_tokens": 4},
                       "output": {"dir": str(tmp_path / "runs"), "name": "lm", "tensorboard": False}}, quiet=True)
    run = quantize_lm(src, "int8-weight", quiet=True)
    assert run.name == "lm-int8-weight"
    m = json.loads((run / "metrics.json").read_text())
    ref = json.loads((src / "metrics.json").read_text())["test"]["perplexity"]
    assert abs(m["test"]["perplexity"] / ref - 1) < 0.05  # int8 costs little perplexity
    assert m["compression"]["method"] == "int8-weight"
    assert m["compression"]["size_bytes"] < 0.5 * m["compression"]["source_size_bytes"]
    assert luban.load(run).generate_text("the", max_new_tokens=3, do_sample=False)["tokens"] > 0
    with pytest.raises(LubanError, match="already quantized"):  # refused: already quantized
        quantize_lm(run, "int4-weight", quiet=True)


def test_refusals(tiny_qwen, trained_text_run, tmp_path):
    from luban.cli import main
    from luban.compress.llm import quantize_lm

    with pytest.raises(LubanError, match="causal language models"):  # a classifier run
        quantize_lm(trained_text_run["run"], "int8-weight", quiet=True)
    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(LubanError, match="not a causal language model"):
        quantize_lm(enc, "int4-weight", out=tmp_path / "x", quiet=True)
    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_qwen, bad)
    (bad / "config.json").write_text("{not json")
    assert main(["compress", str(bad), "--quantize", "int8-weight", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "y").exists() and not any(tmp_path.glob("y*"))
    # a quantized run whose weights were damaged: one clear error when it loads
    run = quantize_lm(tiny_qwen, "int8-weight", out=tmp_path / "q8", quiet=True)
    (run / "model" / "hf" / "quantized.safetensors").write_bytes(b"\0" * 64)
    import luban

    with pytest.raises(LubanError, match="corrupted"):
        luban.load(run)
    assert main(["compress", str(tmp_path / "nothing"), "--quantize", "int8-weight"]) == 2
    # an int4 layer whose scales have the wrong shape: refused naming the tensor, not read past its end
    from safetensors.torch import load_file, save_file

    from luban.models.quantized_lm import load_quantized, quant_info, save_quantized

    q4 = tmp_path / "q4"
    save_quantized(_fp32(tiny_qwen), q4, "int4-weight", group_size=32)
    tensors = load_file(str(q4 / "quantized.safetensors"))
    tensors["lm_head.scale"] = tensors["lm_head.scale"][:, :1].contiguous()
    save_file(tensors, str(q4 / "quantized.safetensors"))
    with pytest.raises(LubanError, match="lm_head.scale has shape"):
        load_quantized(q4, quant_info(q4))
    meta = json.loads((q4 / "luban_quant.json").read_text())  # a cycle of ties: refused, no endless recursion
    meta["modules"]["lm_head"]["tied_to"] = "model.embed_tokens"
    (q4 / "luban_quant.json").write_text(json.dumps(meta))
    with pytest.raises(LubanError, match="itself tied"):
        load_quantized(q4, quant_info(q4))


def test_tensor_reader_matches_safetensors_and_reads_row_blocks(tmp_path):
    """The quantized loader reads each tensor into its own memory (no file map keeping every touched page resident):
    the same values as safetensors' own loader, any dtype, a large int4 layer block by block; a truncated file is
    refused naming the tensor."""
    from safetensors.torch import load_file, save_file

    from luban.models.quantized_lm import TensorReader, kernel_int4, unpack_int4

    g = torch.Generator().manual_seed(0)
    tensors = {"w.qweight": torch.randint(0, 256, (96, 32), dtype=torch.uint8, generator=g),
               "w.scale": torch.randn(96, 2, generator=g), "emb": torch.randint(-127, 127, (7, 5), dtype=torch.int8),
               "norm": torch.randn(5, generator=g).to(torch.bfloat16), "scalar": torch.tensor(3.5)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    want = load_file(str(path))
    reader = TensorReader(path)
    lazy = reader.lazy("w.qweight")
    assert lazy.shape == (96, 32) and torch.equal(lazy[16:48], want["w.qweight"][16:48])
    full = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(want["w.qweight"]).to(torch.int32), 2)
    assert torch.equal(kernel_int4(lazy, torch.empty(32 * 64, dtype=torch.int32)), full)  # one 64-row block + 32
    for rows, cols in ((896, 4864), (1008, 896), (48, 64)):  # blocks of 64 rows and a tail: the whole matrix's layout
        packed = torch.randint(0, 256, (rows, cols // 2), dtype=torch.uint8, generator=g)
        whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(packed).to(torch.int32), 2)
        assert torch.equal(kernel_int4(packed, torch.empty(850 * cols, dtype=torch.int32)), whole), (rows, cols)
    assert "w.qweight" not in reader and "emb" in reader
    rest = reader.rest()
    assert set(rest) == {"w.scale", "emb", "norm", "scalar"}
    for k, v in rest.items():
        assert v.dtype == want[k].dtype and torch.equal(v, want[k]), k
    with pytest.raises(KeyError, match="w.qweight"):
        reader.pop("w.qweight")
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="past the end"):
        TensorReader(path)
