"""Concurrent text generation through `luban serve`: requests decoded together vs one forward pass per sequence.

    python benchmarks/serve_generate.py --data ../shared/data/tinyshakespeare/input.txt --concurrency 16
    python benchmarks/serve_generate.py --run runs/char_lm_shakespeare --concurrency 16 --requests 128

Without --run, trains examples/char_lm_shakespeare.yaml on --data first (about a minute). Then the same run is
served twice, one server at a time, each warmed up: `luban serve RUN` (concurrent requests decoded in one batch)
and `luban serve RUN --no-batch-generations` (the round-robin scheduler, one forward per sequence per turn). Each
gets the same --requests completions (prompts are lines of the corpus, max_tokens --max-tokens, temperature 0.8,
a seed per request) from --concurrency keep-alive clients. Prints tokens_per_second, requests_per_second, p50_ms
and p99_ms for both (baseline_*), mean_batch (sequences per decoding forward, from /metrics) and same_text: the
share of requests whose text is identical on both servers (seeded sampling, so it should be 1.0). The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, train_run, work_dir  # noqa: E402
from _common import free_port, stop  # noqa: E402
from serve_load import start  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


async def _load(port: int, bodies: list[dict], concurrency: int) -> tuple[list[dict], list[float], float]:
    import httpx

    results: list[dict | None] = [None] * len(bodies)
    latencies: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)

    async def worker(client):
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            r = await client.post(f"http://127.0.0.1:{port}/v1/completions", json=bodies[i])
            latencies.append(time.perf_counter() - t0)
            results[i] = r.json() if r.status_code == 200 else {"error": r.status_code}

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results, latencies, time.perf_counter() - t0


def _mean_batch(port: int) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("luban_generation_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("luban_generation_batch_size_count"):
            count += float(line.split()[-1])
    return round(total / count, 2) if count else None


def measure(run: Path, bodies: list[dict], concurrency: int, batched: bool, log: Path) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "luban", "serve", str(run), "--port", str(port),
           "--max-active-generations", str(concurrency)] + ([] if batched else ["--no-batch-generations"])
    proc = start(cmd, port, log)
    try:
        asyncio.run(_load(port, bodies[:concurrency], concurrency))  # warm-up round
        results, lat, wall = asyncio.run(_load(port, bodies, concurrency))
        mean_batch = _mean_batch(port)
    finally:
        stop(proc)
    ok = [r for r in results if r and "choices" in r]
    tokens = sum(r["usage"]["completion_tokens"] for r in ok)
    lat.sort()
    return {"texts": [r["choices"][0]["text"] if r and "choices" in r else None for r in results],
            "tokens_per_second": round(tokens / wall, 1), "requests_per_second": round(len(ok) / wall, 2),
            "p50_ms": round(1000 * lat[len(lat) // 2], 1), "p99_ms": round(1000 * lat[int(len(lat) * 0.99) - 1], 1),
            "errors": len(results) - len(ok), "mean_batch": mean_batch, "seconds": round(wall, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="a text-generation run (default: train examples/char_lm_shakespeare.yaml)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()

    work = work_dir()
    run = Path(a.run) if a.run else train_run(ROOT / "examples" / "char_lm_shakespeare.yaml",
                                              [f"data.train={a.data}"], out=work, name="char_lm", quiet=True)[0]
    lines = [x.strip() for x in Path(a.data).read_text(encoding="utf-8").splitlines() if len(x.strip()) > 8]
    rng = random.Random(0)
    bodies = [{"prompt": rng.choice(lines)[:rng.randint(4, 40)], "max_tokens": a.max_tokens, "temperature": 0.8,
               "seed": i} for i in range(a.requests)]
    luban = measure(run, bodies, a.concurrency, True, work / "batched.log")
    base = measure(run, bodies, a.concurrency, False, work / "single.log")
    same = sum(x == y and x is not None for x, y in zip(luban["texts"], base["texts"], strict=True)) / len(bodies)
    for name, r in (("batched", luban), ("one forward per sequence", base)):
        print(f"{name}: {r['tokens_per_second']} tokens/s, {r['requests_per_second']} requests/s, "
              f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, mean batch {r['mean_batch']}, errors {r['errors']}")
    emit({"run": run.name, "concurrency": a.concurrency, "requests": a.requests, "max_tokens": a.max_tokens,
          **{k: v for k, v in luban.items() if k != "texts"},
          **{f"baseline_{k}": v for k, v in base.items() if k != "texts"},
          "speedup": round(luban["tokens_per_second"] / max(base["tokens_per_second"], 1e-9), 2),
          "same_text": round(same, 4)})


if __name__ == "__main__":
    main()
