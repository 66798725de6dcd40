"""Weight-only quantization of a Hugging Face causal LM for CPU inference, and its safe on-disk format.

Methods (`luban compress RUN --quantize ...`, luban.compress.llm):
- int8-weight: every nn.Linear (attention, MLP, the output head) as int8 weights with one fp32 scale per output row
  (symmetric, w = q * scale); the token embedding as int8 rows with a scale each (a tied output head shares them).
  Layers run torch's weight-only int8 kernel (`aten._weight_int8pack_mm`) in bfloat16 (its vectorized path; the
  result comes back in the caller's dtype); 256+ rows (a long prompt, a perplexity window) one dequantized BLAS GEMM.
- int4-weight: every nn.Linear as 4-bit weights in groups of `group_size` (32) input columns, each group with a
  scale and minimum over the lowest-error of 25 ranges (asymmetric, w = q * scale + min, q in 0..15), run by torch's CPU
  int4 kernel (`aten._weight_int4pack_mm_for_cpu`) in bfloat16. The token embedding is 4-bit too (Int4Embedding,
  rows looked up in the kernel layout): tied to an int4 output head (Qwen2.5, SmolLM2, Gemma) it has no copy of its
  own; untied, it is quantized like a layer (int8 rows when its row count is not a multiple of 32). Layers whose
  input width is not a multiple of the group size (or whose output width is not a multiple of 16, the kernel's
  tiling) fall back to int8.
- bf16: the weights as bfloat16, run in bfloat16 (a plain HF folder: `save_pretrained`).

The quantized folder holds config.json (+ generation_config.json, the tokenizer), `quantized.safetensors` (plain
tensors: int8 / uint8 / fp32, never pickle) and `luban_quant.json`, which describes every quantized module (its kind,
shape, group size) and the packing, so the format is readable without luban. The weights file deliberately is not
`model.safetensors`: transformers' `from_pretrained` refuses the folder instead of loading random weights.
Loading builds the model skeleton with its parameters on the meta device (no fp32 copy is ever allocated), swaps in
the quantized modules and assigns the remaining tensors (norms, biases): peak memory ~ the quantized size.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from luban.errors import RunError
from luban.training.progress import stage

QUANT_FILE = "luban_quant.json"
QUANT_WEIGHTS = "quantized.safetensors"
FORMAT = 1
METHODS = ("int8-weight", "int4-weight", "bf16")
DEFAULT_GROUP_SIZE = 32  # int4: bfloat16 scales + zeros of 32 values cost what float32 ones of 64 did
# rows from which an int8 layer dequantizes its weights and runs one BLAS GEMM instead of the weight-only kernel
# (in bfloat16): on an AVX2 CPU, for a 4,864 x 896 matrix, the kernel took 2.4 / 7.3 / 61 ms at 16 / 64 / 512 rows,
# the dequantized GEMM 5.1 / 17 / 46 ms
PREFILL_ROWS = 256


# ------------------------------------------------------------------------------------------------ the math


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q int8 (rows, cols), scale fp32 (rows,)); w ~ q * scale[:, None]."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


# int4 groups: each end of a group's range is tried shrunk by these factors (5 x 5 ranges, the plain min-max one
# among them) and the range with the lowest squared error is kept (see _fit_groups)
RANGE_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8)
FIT_ROWS = 2048  # rows fitted at a time (bounds the search's memory on a 151,936-row output head)


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric per-group 4-bit: (packed uint8 (rows, cols/2), scale (rows, groups), min (rows, groups));
    w ~ q * scale + min with q in 0..15; two values per byte, the even column in the low nibble. Each group's
    range is the one of 25 candidates with the lowest squared error (_fit_groups), never worse than min-max."""
    w = w.detach().float()
    rows, cols = w.shape
    q = torch.empty(rows, cols, dtype=torch.uint8)
    scale = torch.empty(rows, cols // group_size)
    lo = torch.empty(rows, cols // group_size)
    for i in range(0, rows, FIT_ROWS):
        g = w[i: i + FIT_ROWS].reshape(-1, cols // group_size, group_size)
        qi, scale[i: i + FIT_ROWS], lo[i: i + FIT_ROWS] = _fit_groups(g)
        q[i: i + FIT_ROWS] = qi.reshape(-1, cols)
    return q[:, 0::2] | (q[:, 1::2] << 4), scale, lo


def _fit_groups(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q uint8, scale, min) for groups g (..., group): of the ranges [min * a, max * b] for a, b in RANGE_SHRINK
    (clipping a group's extremes to refine the grid for the rest), the one with the lowest squared error per group.
    Least-squares refits of (scale, min) lowered the weights' error further but not Qwen2.5's perplexity, so there
    are none (docs/benchmarks.md)."""
    lo0, hi0 = g.amin(dim=-1), g.amax(dim=-1)
    best = None
    for a in RANGE_SHRINK:
        for b in RANGE_SHRINK:
            lo, scale = lo0 * a, ((hi0 * b - lo0 * a) / 15.0).clamp(min=1e-12)
            q = torch.round((g - lo[..., None]) / scale[..., None]).clamp_(0, 15)
            err = ((q * scale[..., None] + lo[..., None] - g) ** 2).sum(dim=-1)
            if best is None:
                best = [q, scale, lo, err]
            else:
                better = err < best[3]
                best = [torch.where(better[..., None], q, best[0]), torch.where(better, scale, best[1]),
                        torch.where(better, lo, best[2]), torch.minimum(err, best[3])]
    return best[0].to(torch.uint8), best[1], best[2]


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(rows, cols/2) uint8 -> (rows, cols) values 0..15 (uint8)."""
    out = torch.stack([packed & 0x0F, packed >> 4], dim=-1)
    return out.reshape(packed.shape[0], packed.shape[1] * 2)


SCRATCH_BYTES = 16 << 20


def int4_scratch() -> torch.Tensor:
    """The int32 buffer kernel_int4 unpacks into: one per model load, reused by every layer."""
    return torch.empty(SCRATCH_BYTES // 4, dtype=torch.int32)


def kernel_int4(packed, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """The portable packing -> torch's CPU int4 kernel layout (one uint8 per two values, row by row). `packed`: the
    (rows, cols/2) uint8 tensor, or a TensorReader.lazy one (sliced by rows: a load reads a large layer block by
    block from the file).

    Memory is the point: the kernel's converter takes the values as int32, 8x the packed size (a whole Qwen2.5-0.5B
    output head, 151,936 x 896: 545 MB). They are unpacked block by block into one reused 16 MB buffer and each
    block's result is copied into the layer's final tensor, so a load allocates little beyond the converted weights.
    A fresh int32 copy per layer (17 MB for a 4,864 x 896 MLP matrix, just below glibc's mmap threshold) fragmented
    the heap instead: the int4 Qwen took 1.6–1.9 GB to load (run to run) for 0.45 GB of weights."""
    scratch = int4_scratch() if scratch is None else scratch
    n, half = packed.shape
    width = half * 2
    # the kernel packs rows in blocks of 32 (see Int4Embedding; a last block of 16 differs): blocks of whole 64s
    # concatenate to exactly the whole matrix's layout (848-row blocks of an 896-row matrix did not: perplexity x3.3)
    rows = max(64, scratch.numel() // width // 64 * 64)
    if rows * width > scratch.numel():
        scratch = torch.empty(rows * width, dtype=torch.int32)
    out = None
    for i in range(0, n, rows):
        block = packed[i: i + rows]
        values = scratch[: block.shape[0] * width].view(block.shape[0], width)
        values[:, 0::2], values[:, 1::2] = block, block
        values[:, 0::2] &= 0x0F
        values[:, 1::2] >>= 4
        converted = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values, 2)
        if i == 0 and block.shape[0] == n:
            return converted
        if out is None:
            out = torch.empty((n, *converted.shape[1:]), dtype=converted.dtype)
        out[i: i + block.shape[0]] = converted
    return out


def kernel_scales_zeros(scale, lo, block: int = 8192) -> torch.Tensor:
    """(groups, rows, 2) bfloat16 [scale, zero] in the kernel's convention w = (q - 8) * scale + zero, i.e. zero =
    min + 8 * scale. `scale` / `lo`: (rows, groups) tensors, or TensorReader.lazy ones, read a block of rows at a
    time: stacking a 151,936-row head's float32 scales and minimums whole took ~100 MB of temporaries at group 32."""
    rows, groups = scale.shape
    out = torch.empty(groups, rows, 2, dtype=torch.bfloat16)
    for i in range(0, rows, block):
        j = min(rows, i + block)
        sc, mn = scale[i:j].float(), lo[i:j].float()
        out[:, i:j, 0] = sc.T
        out[:, i:j, 1] = (mn + 8 * sc).T
    return out


def dequantize_int4(packed, scale, lo, group_size: int) -> torch.Tensor:
    q = unpack_int4(packed).float()
    rows, cols = q.shape
    g = q.reshape(rows, cols // group_size, group_size)
    return (g * scale[..., None] + lo[..., None]).reshape(rows, cols)


# ------------------------------------------------------------------------------------------------ the modules


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T + bias with q int8 per output row, on torch's weight-only int8 CPU kernel."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.float())
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel in bfloat16 whatever x's dtype (result in x's): its bfloat16 path is vectorized, its float32
        one scalar — 0.34 vs 3.4 ms for one row of a 4,864 x 896 matrix on an AVX2 CPU (0.3 % relative error)."""
        dtype = x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.float32
        flat = _flat(x).to(dtype)
        if flat.shape[0] >= PREFILL_ROWS:  # a long prompt / perplexity window: one dequantized GEMM (BLAS) pays better
            y = F.linear(flat, self.qweight.to(dtype) * self.scale.to(dtype)[:, None])
        else:
            y = torch.ops.aten._weight_int8pack_mm(flat.to(torch.bfloat16), self.qweight, self.scale_bf16).to(dtype)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class Int4Linear(nn.Module):
    """y = x @ W.T + bias with W in 4-bit groups (see quantize_int4), on torch's CPU int4 kernel. The portable
    packing (what is saved) is converted once, at construction, to the kernel's own layout."""

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None = None, portable: bool = True, scratch: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = packed.shape[0], packed.shape[1] * 2
        self.group_size = group_size
        # the kernel's convention: w = (q - 8) * scale + zero, so zero = min + 8 * scale; kept in bfloat16, the
        # dtype the layer runs in (see forward)
        self.register_buffer("kernel_weight", kernel_int4(packed, scratch))
        self.register_buffer("scales_zeros", kernel_scales_zeros(scale, lo))
        self.register_buffer("bias", None if bias is None else bias.float())
        if portable:  # kept for saving (the kernel layout is not portable); a loaded model does not need them
            self.register_buffer("packed", packed, persistent=False)
            self.register_buffer("scale", scale.float(), persistent=False)
            self.register_buffer("lo", lo.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """In bfloat16 whatever x's dtype (the result in x's): torch's kernel has a vectorized bfloat16 path and a
        scalar float32 one — on an AVX2 CPU, Qwen2.5-0.5B's 4,864 x 896 MLP matrix took 0.49 vs 6.7 ms for one row,
        0.9 vs 37 ms for eight (dense float32 BLAS: 1.25 / 3.0 ms), at 0.3 % relative error from bfloat16 rounding."""
        dtype = x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.float32
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(_flat(x).to(torch.bfloat16), self.kernel_weight,
                                                        self.group_size, self.scales_zeros).to(dtype)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class Int4Embedding(nn.Module):
    """A token embedding in 4-bit groups, its rows looked up in an Int4Linear's kernel-layout tensors: a tied output
    head's (no copy: for the int4 Qwen2.5-0.5B this drops a 136 MB int8 embedding beside its 151,936-row head), or its
    own (an untied embedding quantized like a layer, 85 instead of 137 MB).

    torch's CPU int4 packing (`_convert_weight_to_int4pack_for_cpu`, inner k tiles 2) stores rows in blocks of 32:
    block b holds rows 32b .. 32b+31 as K x 16 bytes, byte (k, lane) carrying row 32b + lane in its low nibble and
    row 32b + 16 + lane in its high nibble (tests/test_llm_quantize.py checks this against the converter)."""

    def __init__(self, source: Int4Linear, padding_idx: int | None = None):
        super().__init__()
        if source.out_features % 32:
            raise ValueError(f"an int4 embedding needs a multiple of 32 rows, not {source.out_features}")
        self.num_embeddings, self.embedding_dim = source.out_features, source.in_features
        self.group_size, self.padding_idx = source.group_size, padding_idx
        self.register_buffer("kernel_weight", source.kernel_weight, persistent=False)
        self.register_buffer("scales_zeros", source.scales_zeros, persistent=False)
        for name in ("packed", "scale", "lo"):  # the portable form, for saving an untied embedding
            if hasattr(source, name):
                self.register_buffer(name, getattr(source, name), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        lane = flat % 32
        blocks = self.kernel_weight.view(-1, self.embedding_dim, 16)
        q = blocks[flat // 32, :, lane % 16] >> (4 * (lane // 16)).to(torch.uint8)[:, None]  # (tokens, K)
        q = (q & 0x0F).float().view(flat.shape[0], -1, self.group_size) - 8
        sz = self.scales_zeros[:, flat].transpose(0, 1)  # (tokens, groups, 2)
        rows = q * sz[..., 0:1].float() + sz[..., 1:2].float()
        return rows.view(*ids.shape, self.embedding_dim)


def int4_embeddable(head: nn.Module) -> bool:
    return isinstance(head, Int4Linear) and head.out_features % 32 == 0


class Int8Embedding(nn.Module):
    """Token embedding as int8 rows with a scale each: the looked-up rows are dequantized."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.padding_idx = padding_idx
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.float())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.qweight).float() * F.embedding(ids, self.scale[:, None])


# ------------------------------------------------------------------------------------------------ quantize / save


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _tied_head(hf) -> bool:
    out = hf.get_output_embeddings()
    return out is not None and out.weight is hf.get_input_embeddings().weight


def quantize_modules(hf, method: str, group_size: int = DEFAULT_GROUP_SIZE) -> dict:
    """Replace hf's Linear layers and token embedding in place; returns the module table of luban_quant.json."""
    bits = 8 if method == "int8-weight" else 4
    emb = hf.get_input_embeddings()
    head = hf.get_output_embeddings()
    tied = _tied_head(hf)
    names = {m: n for n, m in hf.named_modules()}
    emb_name, head_name = names[emb], names.get(head) if head is not None else None
    modules: dict[str, dict] = {}
    scratch = int4_scratch() if bits == 4 else None
    rows, width = emb.weight.shape
    pad = getattr(emb, "padding_idx", None)

    def int8_embedding() -> Int8Embedding:
        modules[emb_name] = {"kind": "int8-embedding", "shape": [rows, width]}
        return Int8Embedding(*quantize_int8(emb.weight), pad)

    # 4-bit rows need whole 32-row blocks and whole groups; tied, they are the head's own (set after the loop)
    emb4 = bits == 4 and rows % 32 == 0 and width % group_size == 0
    new_emb = None
    if emb4 and not tied:  # quantized like a layer
        new_emb = Int4Embedding(Int4Linear(*quantize_int4(emb.weight, group_size), group_size, scratch=scratch), pad)
        modules[emb_name] = {"kind": "int4-embedding", "shape": [rows, width], "group_size": group_size}
    elif not emb4:
        new_emb = int8_embedding()
    head_module = None
    linears = [(name, m) for name, m in hf.named_modules() if isinstance(m, nn.Linear)]
    # progress in millions of weights, not layers: the output head alone can be a fifth of the work (a truthful ETA)
    total, done = sum(m.weight.numel() for _, m in linears), 0
    with stage(f"quantize {method}", total=max(1, round(total / 1e6)), unit="M weights") as progress:
        for name, m in linears:
            share = (emb_name, new_emb) if name == head_name and tied and bits == 8 else None
            _quantize_linear(hf, name, m, modules, bits, group_size, share, scratch)
            if name == head_name:
                head_module = hf.get_submodule(name)
            before, done = round(done / 1e6), done + m.weight.numel()
            progress.advance(round(done / 1e6) - before)
    if new_emb is None:  # tied to the head: its int4 rows serve the lookup, no copy (int8 rows if it is not int4)
        if int4_embeddable(head_module):
            new_emb = Int4Embedding(head_module, pad)
            modules[emb_name] = {"kind": "int4-embedding", "shape": [rows, width], "tied_to": head_name}
        else:
            new_emb = int8_embedding()
    _set_module(hf, emb_name, new_emb)
    return modules


def _quantize_linear(hf, name: str, m: nn.Linear, modules: dict, bits: int, group_size: int, share, scratch) -> None:
    """Swap one nn.Linear for its quantized module and describe it in `modules`; `share`: (name, Int8Embedding) whose
    int8 rows a tied int8 head uses."""
    bias = m.bias.detach() if m.bias is not None else None
    if share is not None:
        new = Int8Linear(share[1].qweight, share[1].scale, bias)  # shares the embedding's int8 rows
        modules[name] = {"kind": "int8", "shape": [m.out_features, m.in_features], "tied_to": share[0]}
    elif bits == 4 and m.in_features % group_size == 0 and m.out_features % 16 == 0:  # the kernel's tiling
        packed, scale, lo = quantize_int4(m.weight, group_size)
        new = Int4Linear(packed, scale, lo, group_size, bias, scratch=scratch)
        modules[name] = {"kind": "int4", "shape": [m.out_features, m.in_features], "group_size": group_size}
    else:
        qw, sc = quantize_int8(m.weight)
        new = Int8Linear(qw, sc, bias)
        modules[name] = {"kind": "int8", "shape": [m.out_features, m.in_features]}
    modules[name]["bias"] = bias is not None
    _set_module(hf, name, new)


def _module_tensors(name: str, spec: dict, module: nn.Module) -> dict[str, torch.Tensor]:
    if spec.get("tied_to"):
        out = {}
    elif spec["kind"] in ("int4", "int4-embedding"):
        out = {f"{name}.qweight": module.packed, f"{name}.scale": module.scale, f"{name}.min": module.lo}
    else:
        out = {f"{name}.qweight": module.qweight, f"{name}.scale": module.scale}
    if getattr(module, "bias", None) is not None:
        out[f"{name}.bias"] = module.bias
    return out


def save_quantized(hf, folder: Path, method: str, group_size: int = DEFAULT_GROUP_SIZE, extra: dict | None = None):
    """Quantize `hf` (in place) and write it to `folder`: config, generation config, quantized.safetensors and
    luban_quant.json. bf16: a plain HF folder in bfloat16 (+ luban_quant.json). Returns the metadata written."""
    from safetensors.torch import save_file

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "method": method, "tool": "luban", **(extra or {})}
    if method == "bf16":
        hf.to(torch.bfloat16).save_pretrained(str(folder))
        meta.update(dtype="bfloat16", weights="model.safetensors")
    else:
        modules = quantize_modules(hf, method, group_size)
        tensors: dict[str, torch.Tensor] = {}
        for name, spec in modules.items():
            tensors.update(_module_tensors(name, spec, hf.get_submodule(name)))
        quantized = set(modules)
        for name, p in list(hf.named_parameters()) + list(hf.named_buffers()):
            owner = name.rpartition(".")[0]
            if owner in quantized or _non_persistent(hf, name):
                continue
            tensors[name] = p.detach().float().contiguous()
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / QUANT_WEIGHTS),
                  metadata={"format": "pt", "luban_quant": method})
        hf.config.save_pretrained(str(folder))
        if getattr(hf, "generation_config", None) is not None:
            hf.generation_config.save_pretrained(str(folder))
        meta.update(bits=8 if method == "int8-weight" else 4, group_size=group_size if method == "int4-weight" else None,
                    weights=QUANT_WEIGHTS, modules=modules,
                    schemes={"int8": "symmetric per output row: w = qweight (int8) * scale[row]",
                             "int8-embedding": "symmetric per row (token): w = qweight (int8) * scale[row]",
                             "int4-embedding": "the rows of the int4 module named by tied_to (a tied output head), or "
                                               "without tied_to its own tensors as an int4 layer's",
                             "int4": "asymmetric per group of group_size input columns: w = q * scale + min, q in "
                                     "0..15; qweight uint8 (rows, cols/2), the even column in the low nibble"},
                    kernels={"int8": "torch.ops.aten._weight_int8pack_mm",
                             "int4": "torch.ops.aten._weight_int4pack_mm_for_cpu"})
    (folder / QUANT_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


def _non_persistent(model: nn.Module, name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    mod = model.get_submodule(owner) if owner else model
    return leaf in getattr(mod, "_non_persistent_buffers_set", set())


# ------------------------------------------------------------------------------------------------ load


def quant_info(folder: Path) -> dict | None:
    """luban_quant.json of a folder, or None when the folder is not quantized by luban."""
    path = Path(folder) / QUANT_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        info["method"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"{path}: unreadable quantization metadata ({type(e).__name__}: {e})") from None
    if not isinstance(info.get("format"), int) or info["format"] > FORMAT:
        raise RunError(f"{path}: quantization format {info.get('format')!r}; this luban reads up to {FORMAT}")
    return info


@contextlib.contextmanager
def _params_on_meta():
    """Parameters created inside are put on the meta device (no memory); buffers stay real (rotary tables)."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None:
            kind = type(module._parameters[name])
            module._parameters[name] = kind(module._parameters[name].to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def load_quantized(folder: Path, info: dict):
    """The HF causal LM of a quantized folder (see the module doc), in eval mode on the CPU."""
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    folder = Path(folder)
    if info["method"] == "bf16":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.bfloat16).eval()
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        tensors = TensorReader(folder / info.get("weights", QUANT_WEIGHTS))
    except (OSError, ValueError, SafetensorError) as e:
        raise RunError(f"{folder}: missing or corrupted quantized model files ({type(e).__name__}: {e})") from None
    with _params_on_meta(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_config(config)
    scratch = int4_scratch() if info["method"] == "int4-weight" else None
    try:
        built: dict[str, nn.Module] = {}

        def build(name: str) -> nn.Module:  # each module once, its bias with it (a tied source may come first)
            if name not in built:
                spec, bias = info["modules"][name], tensors.pop(f"{name}.bias", None)
                if spec.get("tied_to"):
                    if info["modules"][spec["tied_to"]].get("tied_to"):  # a chain or a cycle of ties
                        raise ValueError(f"{name} is tied to {spec['tied_to']}, itself tied")
                    built[name] = _tie(spec, build(spec["tied_to"]), bias)
                else:
                    built[name] = _build(spec, name, tensors, bias, scratch)
                    release_freed_memory()
            return built[name]

        for name in info["modules"]:
            build(name)
        for name, new in built.items():
            _set_module(hf, name, new)
        missing = [n for n, p in hf.named_parameters() if p.is_meta and n not in tensors]
        if missing:
            raise KeyError(f"tensor {missing[0]} is missing")
        hf.load_state_dict(tensors.rest(), strict=False, assign=True)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise RunError(f"{folder}: missing or corrupted quantized model files ({type(e).__name__}: {e})") from None
    if (folder / "generation_config.json").is_file():
        hf.generation_config = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
    return hf.eval()


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    global _TRIM
    if _TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None

SAFETENSORS_DTYPES = {"U8": torch.uint8, "I8": torch.int8, "I32": torch.int32, "I64": torch.int64,
                      "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


class TensorReader:
    """The tensors of a .safetensors file, each read on demand into its own memory (`pop`). safetensors' loader maps
    the whole file and its tensors point into the map: every page a load touches stays in the process's resident
    memory until the last tensor is gone — for the int4 Qwen the 437 MB file beside the 437 MB of converted weights
    it was read for. Read tensor by tensor, the packed weights are freed as each layer is converted. The format: an
    8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the raw bytes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            size = self.path.stat().st_size
            if not 2 <= n <= size - 8:
                raise ValueError(f"not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
        self.base = 8 + n
        self.entries = {k: v for k, v in header.items() if k != "__metadata__"}
        for name, e in self.entries.items():
            begin, end = e["data_offsets"]
            dtype = SAFETENSORS_DTYPES.get(e["dtype"])
            if dtype is None:
                raise ValueError(f"tensor {name}: unsupported dtype {e['dtype']}")
            count = 1
            for d in e["shape"]:
                count *= d
            if end - begin != count * dtype.itemsize or self.base + end > size:
                raise ValueError(f"tensor {name}: {end - begin} bytes for shape {e['shape']} {e['dtype']}, or past "
                                 f"the end of the file")

    def __contains__(self, name) -> bool:
        return name in self.entries

    def pop(self, name: str, default=KeyError):
        if name not in self.entries and default is not KeyError:
            return default
        return self.read(name, self._take(name))

    def lazy(self, name: str) -> "_LazyRows":
        """A 2-d tensor of the file that kernel_int4 reads a block of rows at a time (never whole)."""
        return _LazyRows(self, name, self._take(name))

    def _take(self, name: str) -> dict:
        if name not in self.entries:
            raise KeyError(f"tensor {name} is missing")
        return self.entries.pop(name)

    def read(self, name: str, entry: dict, start: int = 0, count: int | None = None) -> torch.Tensor:
        """Rows start .. start + count of the tensor `name` (all of it by default), in fresh memory."""
        shape, dtype = list(entry["shape"]), SAFETENSORS_DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        if count is not None:
            row = (end - begin) // max(1, shape[0])
            begin, shape[0] = begin + start * row, count
            end = begin + count * row
        out = torch.empty(shape, dtype=dtype)
        with open(self.path, "rb") as f:
            f.seek(self.base + begin)
            if end > begin and f.readinto(memoryview(out.view(-1).view(torch.uint8).numpy())) != end - begin:
                raise ValueError(f"tensor {name}: the file ends early")
        return out

    def rest(self) -> dict[str, torch.Tensor]:
        """Every tensor not popped yet."""
        return {name: self.pop(name) for name in list(self.entries)}


class _LazyRows:
    """A tensor of the file read only as row slices (`lazy[i:j]`, clamped to its rows like a tensor's)."""

    def __init__(self, reader: TensorReader, name: str, entry: dict):
        self.reader, self.name, self.entry = reader, name, entry
        self.shape = tuple(entry["shape"])

    def __getitem__(self, rows: slice) -> torch.Tensor:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError(f"tensor {self.name}: only contiguous row slices are read")
        return self.reader.read(self.name, self.entry, start, max(0, stop - start))


def _tie(spec: dict, src: nn.Module, bias=None) -> nn.Module:
    """A module sharing the tensors of the one it is tied to (a tied output head / token embedding)."""
    if spec["kind"] == "int4-embedding":
        if not int4_embeddable(src):
            raise ValueError(f"an int4 embedding is tied to {spec['tied_to']}, not an int4 layer of 32n rows")
        return Int4Embedding(src)
    if spec["kind"] == "int8" and isinstance(src, (Int8Embedding, Int8Linear)):
        return Int8Linear(src.qweight, src.scale, bias)
    raise ValueError(f"a {spec['kind']} module cannot be tied to a {type(src).__name__}")


def _build(spec: dict, name: str, tensors: TensorReader, bias=None, scratch=None) -> nn.Module:
    kind = spec["kind"]
    four = kind in ("int4", "int4-embedding")
    q = tensors.lazy(f"{name}.qweight") if four else tensors.pop(f"{name}.qweight")
    if list(q.shape) != [spec["shape"][0], spec["shape"][1] // (2 if four else 1)]:
        raise ValueError(f"{name}.qweight has shape {list(q.shape)}, expected from {spec['shape']}")
    if four:
        group = int(spec["group_size"])
        scale, lo = tensors.lazy(f"{name}.scale"), tensors.lazy(f"{name}.min")
        for t in (scale, lo):
            if list(t.shape) != [spec["shape"][0], spec["shape"][1] // group]:
                raise ValueError(f"{t.name} has shape {list(t.shape)}, expected {spec['shape'][0]} rows of "
                                 f"{spec['shape'][1]} // {group} groups")
        layer = Int4Linear(q, scale, lo, group, bias, portable=False, scratch=scratch)
        return Int4Embedding(layer) if kind == "int4-embedding" else layer
    if kind == "int8-embedding":
        return Int8Embedding(q, tensors.pop(f"{name}.scale"))
    if kind == "int8":
        return Int8Linear(q, tensors.pop(f"{name}.scale"), bias)
    raise ValueError(f"unknown module kind {kind!r}")
