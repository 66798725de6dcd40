"""A CTranslate2 whisper folder (faster-whisper's layout: model.bin, config.json, tokenizer.json) -> a Hugging Face
WhisperForConditionalGeneration folder (config, safetensors, tokenizer, feature extractor, generation config).

model.bin is CTranslate2's own binary (python/ctranslate2/specs/model_spec.py, `_serialize`), read here with numpy:
    u32 binary version (<= 6) | string spec name | u32 spec revision | u32 n variables |
    n x (string name | u8 rank | rank x u32 dim | u8 dtype id | u32 nbytes | raw bytes) |
    u32 n aliases | n x (string alias | string target)
where a string is u16 length (with the final NUL) + UTF-8 bytes + NUL, and dtype ids are CTranslate2's DataType
enum: float32, int8, int16, int32, float16, bfloat16. Attention projections are fused there (q|k|v in the
self-attention's linear_0, k|v in the cross-attention's linear_1); they are split into HF's q/k/v_proj.
Special-token ids come from the tokenizer (whisper tiny.en's differ from multilingual whisper's by one)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np

from luban.hub.common import ModelImportError, Reader, log, offline, torch_dtype

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5: bfloat16, handled below
SAMPLE_RATE = 16000


def read_ct2(path: Path) -> tuple[str, dict]:
    """(spec name, {variable name: numpy array}) of a CTranslate2 model.bin; aliases resolved."""
    r = Reader(path.read_bytes())
    take = r.take

    def string():
        return bytes(r.raw(take("H"))[:-1]).decode("utf-8")

    try:
        version = take("I")
        if not 1 <= version <= 6:
            raise ModelImportError(f"{path}: CTranslate2 binary version {version} is not one luban reads (1-6)")
        spec = string()
        take("I")  # spec revision
        variables = {}
        for _ in range(take("I")):
            name = string()
            shape = [take("I") for _ in range(take("B"))]
            type_id, nbytes = take("B"), take("I")
            raw = r.raw(nbytes)
            if type_id == 5:  # bfloat16: the high half of a float32
                arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif type_id in CT2_DTYPES:
                arr = np.frombuffer(raw, CT2_DTYPES[type_id])
            else:
                raise ModelImportError(f"{path}: unknown CTranslate2 dtype id {type_id} for {name}")
            variables[name] = arr.reshape(shape) if shape else arr[0]
        for _ in range(take("I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise ModelImportError(f"{path}: truncated or corrupt CTranslate2 model.bin ({e})") from None
    if any(k.endswith("weight_scale") for k in variables):
        raise ModelImportError(f"{path}: an int8/int16-quantized CTranslate2 model; luban imports float16, bfloat16 "
                               "or float32 ones (ct2-transformers-converter --quantization float16)")
    return spec, variables


def _layers(v: dict, side: str) -> int:
    return len({m.group(1) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})


def _attn(out: dict, v: dict, src: str, dst: str, fused: str):
    """Split CTranslate2's fused projections into HF's q/k/v_proj (k has no bias in whisper)."""
    w, b = v[f"{src}/linear_0/weight"], v[f"{src}/linear_0/bias"]
    if fused == "qkv":
        names, ws, bs = ("q", "k", "v"), np.split(w, 3), np.split(b, 3)
    else:  # cross-attention: linear_0 is q, linear_1 is k|v
        kv_w, kv_b = v[f"{src}/linear_1/weight"], v[f"{src}/linear_1/bias"]
        names, ws, bs = ("q", "k", "v"), [w, *np.split(kv_w, 2)], [b, *np.split(kv_b, 2)]
    for n, wi, bi in zip(names, ws, bs):
        out[f"{dst}.{n}_proj.weight"] = wi
        if n != "k":
            out[f"{dst}.{n}_proj.bias"] = bi
    o = "linear_1" if fused == "qkv" else "linear_2"
    out[f"{dst}.out_proj.weight"], out[f"{dst}.out_proj.bias"] = v[f"{src}/{o}/weight"], v[f"{src}/{o}/bias"]
    out[f"{dst}_layer_norm.weight"] = v[f"{src}/layer_norm/gamma"]
    out[f"{dst}_layer_norm.bias"] = v[f"{src}/layer_norm/beta"]


def hf_state_dict(v: dict) -> dict:
    sd = {}
    for side in ("encoder", "decoder"):
        for i in range(_layers(v, side)):
            s, t = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            _attn(sd, v, f"{s}/self_attention", f"{t}.self_attn", "qkv")
            if side == "decoder":
                _attn(sd, v, f"{s}/attention", f"{t}.encoder_attn", "kv")
            sd[f"{t}.fc1.weight"], sd[f"{t}.fc1.bias"] = v[f"{s}/ffn/linear_0/weight"], v[f"{s}/ffn/linear_0/bias"]
            sd[f"{t}.fc2.weight"], sd[f"{t}.fc2.bias"] = v[f"{s}/ffn/linear_1/weight"], v[f"{s}/ffn/linear_1/bias"]
            sd[f"{t}.final_layer_norm.weight"] = v[f"{s}/ffn/layer_norm/gamma"]
            sd[f"{t}.final_layer_norm.bias"] = v[f"{s}/ffn/layer_norm/beta"]
        sd[f"model.{side}.layer_norm.weight"] = v[f"{side}/layer_norm/gamma"]
        sd[f"model.{side}.layer_norm.bias"] = v[f"{side}/layer_norm/beta"]
        sd[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
    for c in ("conv1", "conv2"):
        sd[f"model.encoder.{c}.weight"] = v[f"encoder/{c}/weight"]
        sd[f"model.encoder.{c}.bias"] = v[f"encoder/{c}/bias"]
    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]  # proj_out is tied to it
    return sd


def special_ids(tok_json: dict, where: Path | str = "tokenizer.json") -> dict:
    ids = {a["content"]: a["id"] for a in tok_json.get("added_tokens", [])}
    need = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
            "<|startofprev|>", "<|notimestamps|>"]
    missing = [t for t in need if t not in ids]
    if missing:
        raise ModelImportError(f"{where}: not a whisper tokenizer (no {', '.join(missing)})")
    langs = {t: i for t, i in ids.items() if re.fullmatch(r"<\|[a-z]{2,3}(_[a-z]+)?\|>", t) and t != "<|nocaptions|>"
             and ids["<|startoftranscript|>"] < i < ids["<|translate|>"]}
    return {**{t: ids[t] for t in need}, "langs": langs}


def _ints(v: dict, key: str, default: int) -> int:
    x = v.get(key)
    return int(x) if x is not None else default


def build_config(v: dict, ct2_cfg: dict, sp: dict):
    from transformers import WhisperConfig

    vocab, d = v["decoder/embeddings/weight"].shape
    multilingual = vocab >= 51865
    eot, sot = sp["<|endoftext|>"], sp["<|startoftranscript|>"]
    heads_enc = _ints(v, "encoder/num_heads", max(1, d // 64))
    heads_dec = _ints(v, "decoder/num_heads", heads_enc)
    ffn = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    suppress = [int(i) for i in ct2_cfg.get("suppress_ids", [])]
    begin = [int(i) for i in ct2_cfg.get("suppress_ids_begin", [220, eot])]
    cfg = WhisperConfig(vocab_size=int(vocab), num_mel_bins=int(v["encoder/conv1/weight"].shape[1]), d_model=int(d),
                        encoder_layers=_layers(v, "encoder"), decoder_layers=_layers(v, "decoder"),
                        encoder_attention_heads=heads_enc, decoder_attention_heads=heads_dec,
                        encoder_ffn_dim=int(ffn),
                        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
                        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
                        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
                        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=sot,
                        suppress_tokens=suppress, begin_suppress_tokens=begin, tie_word_embeddings=True,
                        architectures=["WhisperForConditionalGeneration"])
    gen = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "decoder_start_token_id": sot,
           "max_length": cfg.max_target_positions, "suppress_tokens": suppress, "begin_suppress_tokens": begin,
           "no_timestamps_token_id": sp["<|notimestamps|>"], "prev_sot_token_id": sp["<|startofprev|>"],
           "max_initial_timestamp_index": 50, "return_timestamps": False, "is_multilingual": multilingual,
           "alignment_heads": [list(map(int, h)) for h in ct2_cfg.get("alignment_heads", [])]}
    if multilingual:
        gen["lang_to_id"] = sp["langs"]
        gen["task_to_id"] = {"transcribe": sp["<|transcribe|>"], "translate": sp["<|translate|>"]}
    return cfg, gen, multilingual


def build_processor(src: Path, sp: dict, vocab: int, n_mels: int):
    from tokenizers import AddedToken
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    tok = WhisperTokenizer(tokenizer_file=str(src / "tokenizer.json"), unk_token="<|endoftext|>",
                           bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    first = sp["<|notimestamps|>"] + 1  # timestamp tokens <|0.00|> .. <|30.00|> fill the rest of the vocabulary
    if len(tok) < vocab:
        tok.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False)
                        for i in range(vocab - first)])
    if len(tok) != vocab:
        raise ModelImportError(f"{src}/tokenizer.json: {len(tok)} tokens for a model with {vocab} embeddings")
    fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE)
    return WhisperProcessor(feature_extractor=fe, tokenizer=tok)


def sample_audio(path: Path | None) -> tuple[np.ndarray, str]:
    """The wav to decode in the check: the user's, else a fixed synthetic signal (no speech: a parity probe only)."""
    if path is not None:
        from luban.data.audio import resample

        import soundfile as sf

        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return resample(wave.mean(axis=1), rate, SAMPLE_RATE), str(path)
    t = np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 1.5 * t) + 0.02 * rng.standard_normal(t.size)
    return wave.astype(np.float32), "synthetic 2 s tone"


def prompt_ids(sp: dict, multilingual: bool) -> list[int]:
    ids = [sp["<|startoftranscript|>"]]
    if multilingual:
        ids.append(sp["langs"]["<|en|>"])
    return ids + [sp["<|transcribe|>"], sp["<|notimestamps|>"]] if multilingual else ids + [sp["<|notimestamps|>"]]


def reference(src: Path, features: np.ndarray, prompt: list[int], max_new: int):
    """(encoder output, generated ids) from CTranslate2 itself, or None when it is not installed."""
    try:
        import ctranslate2
    except ImportError:
        return None
    try:
        m = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32", inter_threads=1)
        sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
        enc = np.array(m.encode(sv, to_cpu=True))
        res = m.generate(sv, [prompt], beam_size=1, max_length=max_new + len(prompt), suppress_blank=True,
                         return_no_speech_prob=False)
    except (RuntimeError, ValueError) as e:  # e.g. a folder without vocabulary.txt: CTranslate2 cannot load it
        log(f"check: CTranslate2 cannot run {src} ({e}): no reference")
        return None
    return enc, [int(i) for i in res[0].sequences_ids[0]]


def convert(src: Path, out: Path, dtype: str, audio: Path | None = None) -> tuple[dict, dict]:
    for f in ("model.bin", "config.json", "tokenizer.json"):
        if not (src / f).is_file():
            raise ModelImportError(f"{src}: a CTranslate2 whisper folder needs {f}")
    try:
        ct2_cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
        tok_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelImportError(f"{src}: config.json or tokenizer.json is not valid JSON ({e})") from None
    sp = special_ids(tok_json, src / "tokenizer.json")
    spec, v = read_ct2(src / "model.bin")
    if spec != "WhisperSpec":
        raise ModelImportError(f"{src}/model.bin: a CTranslate2 {spec}; luban maps whisper models only")
    offline()
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, WhisperForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg, gen, multilingual = build_config(v, ct2_cfg, sp)
    log(f"{src.name}: whisper d_model {cfg.d_model}, {cfg.encoder_layers}+{cfg.decoder_layers} layers, vocab "
        f"{cfg.vocab_size} ({'multilingual' if multilingual else 'English-only'})")
    try:
        sd = {k: torch.from_numpy(np.array(a)).to(torch_dtype(dtype)) for k, a in hf_state_dict(v).items()}
    except KeyError as e:
        raise ModelImportError(f"{src}/model.bin: no variable {e} (not a whisper model luban can map)") from None
    cfg.dtype = torch_dtype(dtype)
    cfg.save_pretrained(out)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    GenerationConfig(**gen).save_pretrained(out)
    processor = build_processor(src, sp, cfg.vocab_size, cfg.num_mel_bins)
    processor.save_pretrained(out)
    del sd, v

    model = WhisperForConditionalGeneration.from_pretrained(str(out), local_files_only=True,
                                                            dtype=torch.float32).eval()
    wave, what = sample_audio(audio)
    feats = processor.feature_extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
    prompt = prompt_ids(sp, multilingual)
    max_new = 24
    with torch.inference_mode():
        enc = model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
        ids = model.generate(torch.from_numpy(feats), decoder_input_ids=torch.tensor([prompt]), max_new_tokens=max_new,
                             do_sample=False, num_beams=1)[0].tolist()
    text = processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
    check = {"audio": what, "transcript": text}
    ref = reference(src, feats, prompt, max_new)
    if ref is None:
        check["kind"] = "sanity decode (install ctranslate2 for a parity check against the source)"
        log(f"check: decoded {what!r} -> {text!r} (ctranslate2 not installed: no reference)")
    else:
        ref_enc, ref_ids = ref
        gen_ids = ids[len(prompt):] if ids[:len(prompt)] == prompt else ids  # generate may drop the prompt
        gen_ids = [i for i in gen_ids if i != sp["<|endoftext|>"]]
        ref_text = processor.tokenizer.decode(ref_ids, skip_special_tokens=True).strip()
        diff = float(np.abs(ref_enc - enc).max())
        scale = float(np.abs(ref_enc).max())
        check.update(kind="encoder output and greedy transcript vs CTranslate2 (float32)", encoder_max_abs_diff=diff,
                     encoder_max_abs=scale, reference_transcript=ref_text, same_tokens=gen_ids == ref_ids)
        log(f"check: encoder max |diff| {diff:.2e} (of max {scale:.1f}); transcript {text!r} vs CTranslate2 "
            f"{ref_text!r}")
        if diff > 1e-2 * max(scale, 1.0) or text != ref_text:
            raise ModelImportError(f"{src}: the imported model does not reproduce CTranslate2 (encoder max |diff| "
                                   f"{diff:.3g}; transcript {text!r} vs {ref_text!r})")
    return check, {"architecture": "whisper", "multilingual": multilingual,
                   "loads_with": "WhisperForConditionalGeneration"}
