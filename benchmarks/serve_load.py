"""Serving load test: `luban serve` (micro-batching) against a naive FastAPI + transformers `pipeline` server.

    python benchmarks/serve_load.py --concurrency 32 --requests 2000                 # trains the SST-2 run first
    python benchmarks/serve_load.py --run runs/sst2_minilm --concurrency 32 --requests 2000

Without --run, trains examples/sst2_minilm.yaml on --data (default ../shared/data/sst2) with data.train_limit=10000,
as benchmarks/text_classification.py does (--set adds overrides). Both servers run at once, each in its own
process and warmed up first; the load goes to one at a time, in alternating rounds (--rounds), so that a change in
a shared machine's load falls on both alike:

- luban: `luban serve RUN --replicas CORES --threads 1` (the run exported to ONNX first, fp32 and checked against
  PyTorch, so it runs on onnxruntime; dynamic micro-batching, texts length-sorted into batches that pad little);
- baseline: this script's own naive server — FastAPI + `transformers.pipeline("text-classification")` over the
  same fine-tuned model in Hugging Face layout (`export_hf`), one request = one forward pass.

The load: --concurrency keep-alive HTTP/1.1 connections from a small asyncio client (cheap on CPU, so the servers
get the cores), each request one SST-2 test sentence, --requests in all per server (the same requests to both).
Errors count anything but a 200 with predictions. Prints both servers' figures; the last
line is one JSON object: rps, p50_ms, p99_ms, errors (luban) and baseline_rps, baseline_p50_ms, baseline_p99_ms,
baseline_errors. Goals: errors = 0, rps >= 3x baseline_rps, p99_ms <= baseline_p99_ms.

Also reported, because a shared machine's load moves requests/s: each server process's CPU time per answered
request (cpu_ms_per_request; their ratio is cpu_efficiency_ratio) and the cores it got while loaded (cores_used),
and the 1-minute load average at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, free_port, stop, tsv_folder_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ the baseline


class Req(BaseModel):
    inputs: list[str]



def baseline_app(hf_dir: str):
    """The naive server: one request, one pipeline call (one forward pass), no batching across requests."""
    from fastapi import FastAPI
    from transformers import pipeline

    pipe = pipeline("text-classification", model=hf_dir, trust_remote_code=True, device=-1)
    app = FastAPI()

    @app.get("/readyz")
    def ready():
        return {"status": "ready"}

    @app.post("/v1/predict")
    def predict(req: Req):
        return {"predictions": pipe(req.inputs, top_k=None)}

    return app


# ------------------------------------------------------------------------------------------------ load generator


async def _one_connection(host, port, bodies, counter, latencies, errors, deadline):
    reader = writer = None
    while True:
        i = counter[0]
        if i >= len(bodies) or time.perf_counter() > deadline:
            break
        counter[0] += 1
        body = bodies[i]
        req = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(req)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
                elif k.strip().lower() == b"connection" and v.strip().lower() == b"close":
                    close = True
            payload = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status != 200 or b'"predictions"' not in payload:
                errors.append(status)
            if close:
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            errors.append(type(e).__name__)
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _load(host, port, bodies, concurrency, timeout):
    counter, latencies, errors = [0], [], []
    deadline = time.perf_counter() + timeout
    t0 = time.perf_counter()
    await asyncio.gather(*(_one_connection(host, port, bodies, counter, latencies, errors, deadline)
                           for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return latencies, errors, wall


def request_bodies(texts: list[str], n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [json.dumps({"inputs": [rng.choice(texts)]}).encode() for _ in range(n)]


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


class Tally:
    """One server's answers over several measurement rounds, and the CPU time its process used for them."""

    def __init__(self, pid: int | None = None):
        self.latencies, self.errors, self.wall, self.sent, self.cpu = [], [], 0.0, 0, 0.0
        self.pid = pid

    def add(self, port: int, bodies: list[bytes], concurrency: int, timeout: float) -> None:
        c0 = cpu_seconds(self.pid)
        lat, errors, wall = asyncio.run(_load("127.0.0.1", port, bodies, concurrency, timeout))
        self.cpu += cpu_seconds(self.pid) - c0
        self.latencies += lat
        self.errors += errors
        self.wall += wall
        self.sent += len(bodies)

    def summary(self) -> dict:
        lat = sorted(self.latencies)

        def pct(q):
            return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

        ok = len(lat) - len([e for e in self.errors if isinstance(e, int)])  # answered 200 with predictions
        return {"rps": round(ok / self.wall, 1) if self.wall else 0.0, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                "errors": self.sent - ok,  # non-200 answers, failed connections, requests never sent (timeout)
                "completed": len(lat), "seconds": round(self.wall, 2),
                # load-independent: the server's CPU time per answered request, and the cores it got meanwhile
                "cpu_ms_per_request": round(1000 * self.cpu / len(lat), 2) if lat and self.cpu else None,
                "cores_used": round(self.cpu / self.wall, 2) if self.wall else None}


# ------------------------------------------------------------------------------------------------ servers


def start(cmd: list[str], port: int, log: Path, timeout: float = 300) -> subprocess.Popen:
    import urllib.request

    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ})
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {' '.join(cmd)}\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server not ready after {timeout}s: {log.read_text()}")


def read_texts(run: Path, data: Path | None) -> list[str]:
    """Sentences to send: the test file the run was evaluated on (or --data's test.tsv)."""
    import yaml

    from luban.data.readers import read_table

    d = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["data"]
    path = data / "test.tsv" if data is not None else Path(d["test"])
    frame = read_table(path, "auto", d.get("header", True), d.get("delimiter"), d.get("quoting", "auto"),
                       d.get("encoding", "utf-8"))
    col = d["columns"]["text"]
    return [t for t in frame[col] if isinstance(t, str) and t.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="a trained text-classification run (default: train the SST-2 MiniLM run)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"),
                    help="SST-2 folder (train/dev/test.tsv) for training and for the request texts")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for the training run")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200, help="requests sent to each server before measuring")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"], help="luban's runtime")
    ap.add_argument("--no-export", action="store_true", help="do not `luban export` the run to ONNX first (the "
                    "default exports it when it has no export yet; `luban serve` then runs it on onnxruntime)")
    ap.add_argument("--replicas", type=int, default=os.cpu_count() or 1,
                    help="luban: model copies taking batches in parallel (default: one per core)")
    ap.add_argument("--threads", type=int, default=1, help="luban: threads per forward pass (per replica)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--rounds", type=int, default=4, help="measurement rounds, alternating between the servers")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per load run")
    ap.add_argument("--baseline-server", metavar="HF_DIR", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.baseline_server:  # the child process: run the naive server
        import uvicorn

        uvicorn.run(baseline_app(a.baseline_server), host="127.0.0.1", port=a.port, log_level="warning")
        return

    import luban

    work = Path(tempfile.mkdtemp(prefix="luban-serve-bench-"))
    data = Path(a.data)
    if a.run:
        run = Path(a.run)
    else:
        overrides = tsv_folder_overrides(data) + [f"output.dir={work / 'runs'}", "output.name=sst2_minilm",
                                                  "output.tensorboard=false", "data.train_limit=10000"] + a.set
        run = luban.train(str(ROOT / "examples" / "sst2_minilm.yaml"), overrides)
    texts = read_texts(run, data if (data / "test.tsv").is_file() else None)
    if not a.no_export and a.backend != "torch" and not (run / "model" / "onnx" / "model.onnx").is_file():
        from luban.compress.export import export_run

        export_run(run, "onnx")  # fp32, checked against PyTorch on validation rows; also writes model/hf
    print(f"{len(texts)} request texts; {a.requests} requests at concurrency {a.concurrency}", flush=True)

    servers, procs = {}, []
    try:
        port = free_port()
        procs.append(start([sys.executable, "-m", "luban", "serve", str(run), "--port", str(port),
                            "--backend", a.backend, "--max-batch-size", str(a.max_batch_size),
                            "--max-wait-ms", str(a.max_wait_ms), "--threads", str(a.threads),
                            "--replicas", str(a.replicas)], port, work / "luban.log"))
        servers["luban"] = port
        if not a.skip_baseline:
            hf = run / "model" / "hf"
            if not (hf / "config.json").is_file():
                hf = work / "hf"
                if not luban.load(run, backend="torch").task_predictor.export_hf(hf):
                    raise SystemExit(f"{run}: no Hugging Face backbone to build the baseline pipeline from")
            port = free_port()
            procs.append(start([sys.executable, __file__, "--baseline-server", str(hf), "--port", str(port)], port,
                               work / "baseline.log"))
            servers["baseline"] = port
        for port in servers.values():  # warm-up, not measured
            Tally().add(port, request_bodies(texts, a.warmup, 1), a.concurrency, a.timeout)
        # the same requests to each server, in alternating rounds, so a change in the machine's load while the
        # benchmark runs (a shared box) falls on both alike
        tallies = {name: Tally(proc.pid) for name, proc in zip(servers, procs, strict=True)}
        bodies = request_bodies(texts, a.requests, 0)
        per = -(-len(bodies) // a.rounds)
        for r in range(a.rounds):
            chunk = bodies[r * per:(r + 1) * per]
            for name in (list(servers) if r % 2 == 0 else list(reversed(servers))):
                tallies[name].add(servers[name], chunk, a.concurrency, a.timeout)
        with urllib_get(servers["luban"], "/metrics") as m:
            metrics = m.read().decode()
        backend = json.loads(urllib_get(servers["luban"], "/v1/models").read())["data"][0]["backend"]
    finally:
        for proc in procs:
            stop(proc)
    ours = tallies["luban"].summary()
    ours.update({"mean_batch_size": _mean_batch(metrics), "backend": backend})
    print("luban serve:", json.dumps(ours), flush=True)
    result = {"rps": ours["rps"], "p50_ms": ours["p50_ms"], "p99_ms": ours["p99_ms"], "errors": ours["errors"],
              "cpu_ms_per_request": ours["cpu_ms_per_request"], "cores_used": ours["cores_used"],
              "mean_batch_size": ours["mean_batch_size"], "backend": backend}
    if "baseline" in tallies:
        base = tallies["baseline"].summary()
        print("baseline (FastAPI + pipeline):", json.dumps(base), flush=True)
        result.update({"baseline_rps": base["rps"], "baseline_p50_ms": base["p50_ms"],
                       "baseline_p99_ms": base["p99_ms"], "baseline_errors": base["errors"],
                       "baseline_cpu_ms_per_request": base["cpu_ms_per_request"],
                       "baseline_cores_used": base["cores_used"],
                       "speedup": round(ours["rps"] / base["rps"], 2) if base["rps"] else None})
        if ours["cpu_ms_per_request"] and base["cpu_ms_per_request"]:
            result["cpu_efficiency_ratio"] = round(base["cpu_ms_per_request"] / ours["cpu_ms_per_request"], 2)
    result.update({"load_average": round(os.getloadavg()[0], 2), "concurrency": a.concurrency,
                   "requests": a.requests, "rounds": a.rounds,
                   "replicas": a.replicas, "threads": a.threads, "cpus": os.cpu_count(), "run": str(run)})
    emit(result)


def urllib_get(port: int, path: str):
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)


def _mean_batch(metrics: str) -> float | None:
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith("luban_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("luban_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return round(total / count, 2) if count else None


if __name__ == "__main__":
    main()
