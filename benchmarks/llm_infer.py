"""Fast CPU generation and LLM compression, measured: Hugging Face `generate` fp32 (the peer) vs luban fp32, bf16,
int8-weight and int4-weight on one causal LM, the same prompts, in one run.

    python benchmarks/llm_infer.py ~/.cache/luban/models/qwen2.5-coder-0.5b-instruct

Steps: `luban compress FOLDER --quantize int8-weight | int4-weight | bf16 --out WORK/...` (each in its own
process); then one fresh process per precision (so its peak RSS is its own) loads the model, measures time to first
token and single-stream greedy decoding of --tokens new tokens per prompt (eos ignored, so every precision decodes
the same number of tokens), records its peak RSS so far (int4_rss_ratio: what serving that precision holds), then
perplexity on held text (a few KB of tiny-shakespeare and of Chinese ChnSentiCorp reviews from ../shared/data, or
--ppl-file; its 512-token windows set a higher peak: int4_rss_ratio_with_ppl). HF runs first and last
(interleaved, to bracket the machine's drift); its figure is the mean of the two. Then the fastest luban precision
and fp32 (--serve) are each served (`luban serve RUN`, continuous batching) and sent one request, then 8 concurrent
ones over real HTTP: aggregate tokens/s (aggregate8_tokens_per_s: the highest, aggregate8_precision: whose). The
machine's load (`uptime`) is recorded at each step. With --llama-python (an interpreter with llama-cpp-python,
which builds from source), llama.cpp runs on the GGUF the folder was imported from as a second peer: same token ids,
greedy, eos ignored. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, free_port, peak_rss_mb, stop, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = next((d for d in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data") if d.is_dir()),
              ROOT.parent / "shared" / "data")  # a checkout beside shared/, or a worktree one level deeper
PROMPTS = ["Write a Python function that checks whether a number is prime.",
           "用一句话解释什么是机器学习。"]
PRECISIONS = ("fp32", "int8-weight", "int4-weight", "bf16")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------------------ one process


def held_texts(files: list[str], chars: int) -> dict[str, str]:
    out = {}
    if files:
        for f in files:
            out[Path(f).stem] = Path(f).read_text(encoding="utf-8")[:chars]
        return out
    shakespeare = SHARED / "tinyshakespeare" / "input.txt"
    if shakespeare.is_file():
        text = shakespeare.read_text(encoding="utf-8")
        out["shakespeare"] = text[len(text) // 2: len(text) // 2 + chars]  # away from the famous opening
    zh = SHARED / "chnsenticorp" / "test.tsv"
    if zh.is_file():
        rows = [ln.split("\t")[-1] for ln in zh.read_text(encoding="utf-8").splitlines()[1:]]
        out["chnsenticorp"] = "\n".join(rows)[: chars // 3]  # ~3 bytes a character: a similar byte count
    return out


def perplexity(model, tok, text: str, window: int = 512) -> float:
    import math

    import torch
    import torch.nn.functional as F

    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    total, count = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(ids) - 1, window):
            x = ids[s: s + window + 1]
            if len(x) < 2:
                break
            logits = model(input_ids=x[None, :-1]).logits.float()
            total += float(F.cross_entropy(logits[0], x[1:], reduction="sum"))
            count += len(x) - 1
    return math.exp(total / count)


def worker(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model, local_files_only=True)
    if a.worker == "hf":
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(a.model, local_files_only=True, dtype=torch.float32).eval()
    elif a.worker == "fp32":
        from luban.models.causal_lm import CausalLM, load_hf_causal_lm

        model = CausalLM(load_hf_causal_lm(a.model)).eval()
        hf = model.model
    else:
        from luban.models.causal_lm import load_exported

        model = load_exported(Path(a.run) / "model" / "hf", torch.device("cpu"))
        hf = model.model
    load_s = time.perf_counter() - t0
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[: a.prompts]]
    tokens, seconds, ttft, texts = 0, 0.0, [], []
    if a.worker == "hf":
        for ids in prompts:
            x = torch.tensor([ids])
            t = time.perf_counter()
            out = hf.generate(x, max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=tok.eos_token_id)
            ttft.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = hf.generate(x, max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False,
                              pad_token_id=tok.eos_token_id)
            seconds += time.perf_counter() - t
            new = out[0, len(ids):].tolist()
            tokens += len(new)
            texts.append(tok.decode(new))
    else:
        from luban.generation.decoding import GenerationConfig, iter_token_ids

        cfg = GenerationConfig(max_new_tokens=a.tokens, do_sample=False, eos_token_id=None)
        for ids in prompts:
            t = time.perf_counter()
            it = iter_token_ids(model, ids, cfg)
            new = [next(it)]
            ttft.append(time.perf_counter() - t)
            new += list(it)
            seconds += time.perf_counter() - t
            tokens += len(new)
            texts.append(tok.decode(new))
    # the process's peak while it loaded and decoded — what serving this precision costs — before the perplexity
    # windows, whose 512-token forward passes (dequantized GEMMs, 512 x vocabulary logits) set a higher peak
    decode_rss = peak_rss_mb()
    ppl = {name: round(perplexity(hf, tok, text), 4) for name, text in held_texts(a.ppl_file, a.ppl_chars).items()}
    return {"kind": a.worker, "tokens": tokens, "seconds": round(seconds, 2), "decode_peak_rss_mb": decode_rss,
            "tokens_per_s": round(tokens / seconds, 2), "ttft_ms": round(1000 * sum(ttft) / len(ttft), 1),
            "perplexity": ppl, "peak_rss_mb": peak_rss_mb(), "load_s": round(load_s, 1), "texts": texts,
            "threads": torch.get_num_threads(), "load_avg": load()}


def llama_worker(a) -> dict:
    """llama.cpp (llama-cpp-python, in the interpreter --llama-python names) on the GGUF itself: the same prompt and
    text token ids as the other workers (tokenized by the parent with the model's HF tokenizer), greedy, eos ignored."""
    from llama_cpp import Llama
    import numpy as np

    data = json.loads(Path(a.ids).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    llm = Llama(model_path=a.gguf, n_ctx=1024, n_batch=512, n_threads=a.threads, logits_all=True, verbose=False)
    load_s = time.perf_counter() - t0
    tokens, seconds, ttft, texts = 0, 0.0, [], []
    for ids in data["prompts"]:
        t = time.perf_counter()
        it = llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True)
        new = [next(it)]
        ttft.append(time.perf_counter() - t)
        for tok in it:
            if len(new) >= a.tokens:
                break
            new.append(tok)
        seconds += time.perf_counter() - t
        tokens += len(new)
        texts.append(llm.detokenize(new).decode("utf-8", errors="replace"))
    decode_rss = peak_rss_mb()
    ppl = {}
    for name, ids in data["texts"].items():
        total, count = 0.0, 0
        for s in range(0, len(ids) - 1, 512):
            x = ids[s: s + 513]
            if len(x) < 2:
                break
            llm.reset()
            llm.eval(x[:-1])
            logits = np.asarray(llm.scores[: len(x) - 1], dtype=np.float64)
            top = logits.max(axis=1, keepdims=True)
            logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
            total -= float(logp[np.arange(len(x) - 1), x[1:]].sum())
            count += len(x) - 1
        ppl[name] = round(math.exp(total / count), 4)
    return {"kind": "llama.cpp", "tokens": tokens, "seconds": round(seconds, 2), "decode_peak_rss_mb": decode_rss,
            "tokens_per_s": round(tokens / seconds, 2), "ttft_ms": round(1000 * sum(ttft) / len(ttft), 1),
            "perplexity": ppl, "peak_rss_mb": peak_rss_mb(), "load_s": round(load_s, 1), "texts": texts,
            "threads": a.threads, "load_avg": load()}


def llama_peer(a, work: Path, log: Path) -> dict | None:
    """The llama.cpp worker's figures, or None (no --llama-python, or no GGUF named by --gguf / luban_import.json)."""
    if not a.llama_python:
        return None
    gguf = a.gguf
    record = Path(a.model) / "luban_import.json"
    if not gguf and record.is_file():
        gguf = json.loads(record.read_text(encoding="utf-8")).get("source")
    if not gguf or not Path(gguf).is_file():
        print(f"llama.cpp peer skipped: no GGUF file (--gguf; {record} names {gguf!r})", flush=True)
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model, local_files_only=True)
    ids = {"prompts": [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[: a.prompts]],
           "texts": {n: tok(t, add_special_tokens=False)["input_ids"]
                     for n, t in held_texts(a.ppl_file, a.ppl_chars).items()}}
    path = work / "llama_ids.json"
    path.write_text(json.dumps(ids), encoding="utf-8")
    return run_worker(a, "llama.cpp", None, log, python=a.llama_python,
                      extra=["--gguf", str(gguf), "--ids", str(path)])


# ------------------------------------------------------------------------------------------------ the run


def run_worker(a, kind: str, run: Path | None, log: Path, python: str | None = None,
               extra: list[str] | None = None) -> dict:
    cmd = [python or sys.executable, __file__, a.model, "--worker", kind, "--tokens", str(a.tokens), "--prompts",
           str(a.prompts), "--threads", str(a.threads), "--ppl-chars", str(a.ppl_chars)] + (
        ["--run", str(run)] if run else []) + (extra or [])
    for f in a.ppl_file:
        cmd += ["--ppl-file", f]
    before = load()
    with open(log, "a", encoding="utf-8") as lf:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=lf, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} worker failed (exit {out.returncode}); see {log}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["load_before"] = before
    print(f"{kind}: {r['tokens_per_s']} tokens/s, TTFT {r['ttft_ms']} ms, ppl {r['perplexity']}, "
          f"peak RSS {r['decode_peak_rss_mb']} MB decoding, {r['peak_rss_mb']} MB with perplexity "
          f"(load {before} -> {r['load_avg']})", flush=True)
    return r


def compress(a, method: str, work: Path, log: Path) -> tuple[Path, float]:
    out = work / method
    t = time.perf_counter()
    with open(log, "a", encoding="utf-8") as lf:
        res = subprocess.run([sys.executable, "-m", "luban", "compress", a.model, "--quantize", method, "--out",
                              str(out), "--overwrite"], stdout=lf, stderr=lf, check=False)
    if res.returncode != 0:
        raise SystemExit(f"luban compress --quantize {method} failed; see {log}")
    return out, round(time.perf_counter() - t, 1)


def fp32_run(a, work: Path, log: Path) -> Path:
    """The model as a plain text-generation run (finetune: none), for `luban serve`."""
    import yaml

    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(PROMPTS * 40), encoding="utf-8")
    cfg = {"task": "text_generation", "data": {"train": str(corpus)},
           "model": {"type": "pretrained_lm", "path": str(a.model), "finetune": "none"},
           "preprocessing": {"tokenizer": {"type": "pretrained", "max_length": 64}},
           "trainer": {"batch_size": 4, "precision": "fp32"}, "evaluation": {"baseline": False},
           "generation": {"sample_tokens": 0},
           "output": {"dir": str(work), "name": "fp32", "tensorboard": False, "overwrite": True}}
    path = work / "fp32.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with open(log, "a", encoding="utf-8") as lf:
        res = subprocess.run([sys.executable, "-m", "luban", "train", str(path)], stdout=lf, stderr=lf, check=False)
    if res.returncode != 0:
        raise SystemExit(f"the fp32 run failed; see {log}")
    return work / "fp32"


async def _requests(port: int, n: int, tokens: int) -> tuple[int, float, list[float]]:
    import httpx

    bodies = [{"prompt": PROMPTS[i % 2], "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
              for i in range(n)]
    firsts: list[float] = []

    async def one(client, body):
        t = time.perf_counter()
        got, first = 0, None
        async with client.stream("POST", f"http://127.0.0.1:{port}/v1/completions",
                                 json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
            async for line in r.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                ev = json.loads(line[5:])
                if first is None and ev.get("choices") and ev["choices"][0].get("text"):
                    first = time.perf_counter() - t
                if ev.get("usage"):
                    got = ev["usage"]["completion_tokens"]
        firsts.append(first or 0.0)
        return got

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=1800) as client:
        counts = await asyncio.gather(*(one(client, b) for b in bodies))
    return sum(counts), time.perf_counter() - t0, firsts


def served(a, run: Path, log: Path) -> dict:
    from serve_load import start

    port = free_port()
    cmd = [sys.executable, "-m", "luban", "serve", str(run), "--port", str(port), "--threads", str(a.threads),
           "--max-active-generations", "8", "--request-timeout", "1800"]
    proc = start(cmd, port, log)
    try:
        asyncio.run(_requests(port, 1, 4))  # warm-up
        l1 = load()
        one_tokens, one_s, one_first = asyncio.run(_requests(port, 1, a.tokens))
        l8 = load()
        many_tokens, many_s, firsts = asyncio.run(_requests(port, 8, a.tokens))
    finally:
        stop(proc)
    return {"single_tokens_per_s": round(one_tokens / one_s, 2), "single_ttft_ms": round(1000 * one_first[0], 1),
            "aggregate8_tokens_per_s": round(many_tokens / many_s, 2), "aggregate8_tokens": many_tokens,
            "aggregate8_seconds": round(many_s, 1), "ttft8_ms_median": round(1000 * sorted(firsts)[len(firsts) // 2], 1),
            "load_single": l1, "load_8": l8, "load_after": load()}


def _serve_list(spec: str, best: str) -> list[str]:
    out: list[str] = []
    for p in spec.split(","):
        p = best if p.strip() == "best" else p.strip()
        if p and p not in out:
            out.append(p)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a Hugging Face causal-LM folder (e.g. ~/.cache/luban/models/qwen2.5-coder-0.5b-instruct)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per prompt (greedy, eos ignored)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)} prompts")
    ap.add_argument("--ppl-file", action="append", default=[], help="held text for perplexity (default: shared data)")
    ap.add_argument("--ppl-chars", type=int, default=3000)
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--no-serve", action="store_true", help="skip the `luban serve` figures")
    ap.add_argument("--serve", default="best,fp32",
                    help="precisions to serve, comma-separated; 'best' = the fastest single stream (default: best,fp32 "
                         "— the fastest single stream need not batch best)")
    ap.add_argument("--work", help="folder for the compressed runs (default: a fresh temporary folder)")
    ap.add_argument("--llama-python", help="a Python with llama-cpp-python installed: adds llama.cpp on the GGUF as a "
                    "second peer (the model folder's luban_import.json names the GGUF, or --gguf)")
    ap.add_argument("--gguf", help="the GGUF file for the llama.cpp peer")
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.model = str(Path(a.model).expanduser())
    if a.worker:
        emit(llama_worker(a) if a.worker == "llama.cpp" else worker(a))
        return
    work = Path(a.work) if a.work else work_dir()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "llm_infer.log"
    print(f"work folder {work}; load {load()}", flush=True)
    precisions = [p for p in a.precisions.split(",") if p]
    runs, compress_s = {}, {}
    for method in precisions:
        if method != "fp32":
            runs[method], compress_s[method] = compress(a, method, work, log)
            print(f"compressed {method} in {compress_s[method]} s", flush=True)
    res = {"hf_1": run_worker(a, "hf", None, log)}
    for p in precisions:
        res[p] = run_worker(a, p, runs.get(p), log)
        (work / "partial.json").write_text(json.dumps(res, ensure_ascii=False, indent=1), encoding="utf-8")
    try:
        peer = llama_peer(a, work, log)
    except (SystemExit, Exception) as e:  # noqa: BLE001 - the other figures still count
        print(f"llama.cpp peer failed: {e}", flush=True)
        peer = None
    if peer is not None:
        res["llama.cpp"] = peer
    res["hf_2"] = run_worker(a, "hf", None, log)
    hf_tps = round((res["hf_1"]["tokens_per_s"] + res["hf_2"]["tokens_per_s"]) / 2, 2)
    best = max(precisions, key=lambda p: res[p]["tokens_per_s"])
    ref_ppl = res["fp32"]["perplexity"] if "fp32" in res else res["hf_1"]["perplexity"]
    ref = res["fp32"] if "fp32" in res else res["hf_1"]
    ref_rss, ref_decode_rss = ref["peak_rss_mb"], ref["decode_peak_rss_mb"]

    def ratio(p):
        if p not in res:
            return None
        rs = [res[p]["perplexity"][k] / ref_ppl[k] for k in ref_ppl]
        return round(max(rs), 4)

    serve: dict[str, dict] = {}
    for p in ([] if a.no_serve else _serve_list(a.serve, best)):
        try:
            if p != "fp32" and p not in runs:
                raise ValueError(f"{p} is not among --precisions")
            run = runs.get(p) or fp32_run(a, work, log)
            serve[p] = served(a, run, log)
            print(f"luban serve {p}: one request {serve[p]['single_tokens_per_s']} tokens/s; 8 concurrent "
                  f"{serve[p]['aggregate8_tokens_per_s']} tokens/s aggregate (load {serve[p]['load_8']})", flush=True)
        except (SystemExit, Exception) as e:  # noqa: BLE001 - the other figures still count
            print(f"serve {p} figures failed: {e}", flush=True)
            serve[p] = {"error": str(e)}
    good = {p: r for p, r in serve.items() if r.get("aggregate8_tokens_per_s")}
    agg = max(good, key=lambda p: good[p]["aggregate8_tokens_per_s"]) if good else None
    detail = {p: {k: v for k, v in r.items() if k != "texts"} for p, r in res.items()}
    out = {"model": Path(a.model).name, "tokens_per_prompt": a.tokens, "prompts": a.prompts,
           "hf_tokens_per_s": hf_tps, "luban_tokens_per_s": res[best]["tokens_per_s"], "luban_precision": best,
           "speedup_vs_hf": round(res[best]["tokens_per_s"] / hf_tps, 2),
           # the served precision with the highest 8-stream aggregate, against its own one-request figure
           "aggregate8_tokens_per_s": good[agg]["aggregate8_tokens_per_s"] if agg else None,
           "aggregate8_precision": agg,
           "aggregate8_vs_single": round(good[agg]["aggregate8_tokens_per_s"] / good[agg]["single_tokens_per_s"], 2)
           if agg else None,
           "aggregate8_vs_best_single": round(good[agg]["aggregate8_tokens_per_s"] / res[best]["tokens_per_s"], 2)
           if agg else None,
           "int8_ppl_ratio": ratio("int8-weight"), "int4_ppl_ratio": ratio("int4-weight"),
           "bf16_ppl_ratio": ratio("bf16"),
           # the second peer, llama.cpp on the GGUF itself (--llama-python), where it ran
           "llama_cpp_tokens_per_s": res["llama.cpp"]["tokens_per_s"] if "llama.cpp" in res else None,
           "llama_cpp_ppl_ratio": ratio("llama.cpp"),
           # load + decode peak (the goal's sense: what a served int4 model holds) and the whole worker's peak
           "int4_rss_ratio": round(res["int4-weight"]["decode_peak_rss_mb"] / ref_decode_rss, 3)
           if "int4-weight" in res else None,
           "int4_rss_ratio_with_ppl": round(res["int4-weight"]["peak_rss_mb"] / ref_rss, 3) if "int4-weight" in res
           else None,
           "ttft_ms": res[best]["ttft_ms"], "serve": serve, "compress_seconds": compress_s, "detail": detail,
           "sample_texts": {p: r["texts"][0][:160] for p, r in res.items()}, "threads": a.threads,
           "load_end": load()}
    emit(out)


if __name__ == "__main__":
    main()
