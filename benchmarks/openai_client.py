"""The official `openai` Python client against `luban serve` (OpenAI-compatible API), end to end.

    python benchmarks/openai_client.py                       # trains a small character GPT first
    python benchmarks/openai_client.py --run runs/char_lm_shakespeare

Without --run, trains examples/char_lm_shakespeare.yaml for a few steps on --data (default: tiny-shakespeare when
../shared/data/tinyshakespeare/input.txt exists, else the SST-2 training sentences, else this repository's
README). Serves it with an API key and checks, through `openai.OpenAI(base_url=.../v1)`: the model list; a chat
completion (text, usage counts, finish_reason); the same request streamed (the pieces join to the same text, the
last choice chunk carries finish_reason, the usage chunk matches); a completion with n=2 and a stop string;
seeded determinism; and that errors surface as the client's typed exceptions (401, 404, 400). The last line is one
JSON object with `ok: true` when every check passed.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, free_port, stop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def corpus(work: Path, data: str | None) -> Path:
    if data:
        return Path(data)
    shakespeare = SHARED / "tinyshakespeare" / "input.txt"
    if shakespeare.is_file():
        return shakespeare
    out = work / "corpus.txt"
    sst2 = SHARED / "sst2" / "train.tsv"
    if sst2.is_file():
        with open(sst2, encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        out.write_text("\n".join(r["sentence"] for r in rows[:20000]) + "\n", encoding="utf-8")
    else:
        out.write_text((ROOT / "README.md").read_text(encoding="utf-8"), encoding="utf-8")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="a text-generation run (default: train a small one)")
    ap.add_argument("--data", help="a text corpus to train on (default: see the module doc)")
    ap.add_argument("--steps", type=int, default=400, help="training steps for the small run")
    a = ap.parse_args()

    import luban

    work = Path(tempfile.mkdtemp(prefix="luban-openai-"))
    if a.run:
        run = Path(a.run)
    else:
        text = corpus(work, a.data)
        run = luban.train(str(ROOT / "examples" / "char_lm_shakespeare.yaml"), [
            f"data.train={text}", f"output.dir={work / 'runs'}", "output.name=char_lm", "output.tensorboard=false",
            "trainer.epochs=1", f"trainer.steps_per_epoch={a.steps}", "trainer.num_threads=1",
            "model.n_layer=2", "model.n_embd=64", "generation.sample_tokens=20"])

    from openai import AuthenticationError, BadRequestError, NotFoundError, OpenAI

    port, key = free_port(), "bench-key"
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "luban", "serve", str(run), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LUBAN_API_KEYS": key})
    checks: dict[str, bool] = {}
    details: dict = {}
    try:
        base = f"http://127.0.0.1:{port}/v1"
        client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
        t0 = time.time()
        while True:  # /readyz: 200 once the model is loaded and warm
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:  # not listening yet, or 503 while loading
                pass
            if proc.poll() is not None or time.time() - t0 > 300:
                raise SystemExit("server did not start:\n" + (work / "server.log").read_text())
            time.sleep(0.5)
        models = client.models.list()
        name = run.name
        checks["models_list"] = name in [m.id for m in models.data]

        messages = [{"role": "user", "content": "ROMEO:"}]
        chat = client.chat.completions.create(model=name, messages=messages, max_tokens=24, seed=7, temperature=0.8)
        c0, u = chat.choices[0], chat.usage
        checks["chat_text"] = isinstance(c0.message.content, str) and c0.message.role == "assistant"
        checks["chat_usage"] = (u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens
                                and (u.completion_tokens == 24 if c0.finish_reason == "length"
                                     else 0 < u.completion_tokens <= 24))
        checks["chat_finish_reason"] = c0.finish_reason in ("length", "stop")
        again = client.chat.completions.create(model=name, messages=messages, max_tokens=24, seed=7, temperature=0.8)
        checks["seeded"] = again.choices[0].message.content == c0.message.content

        pieces, finish, usage, chunks = [], None, None, 0
        stream = client.chat.completions.create(model=name, messages=messages, max_tokens=24, seed=7,
                                                temperature=0.8, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            chunks += 1
            for ch in chunk.choices:
                if ch.delta.content:
                    pieces.append(ch.delta.content)
                if ch.finish_reason:
                    finish = ch.finish_reason
            if chunk.usage:
                usage = chunk.usage
        checks["stream_text"] = "".join(pieces) == c0.message.content and chunks > 3
        checks["stream_finish_reason"] = finish == c0.finish_reason
        checks["stream_usage"] = usage is not None and usage.completion_tokens == u.completion_tokens \
            and usage.prompt_tokens == u.prompt_tokens

        comp = client.completions.create(model=name, prompt="ROMEO:", max_tokens=12, n=2, seed=3)
        checks["completion_n"] = [c.index for c in comp.choices] == [0, 1] and comp.usage.completion_tokens > 0
        greedy = client.completions.create(model=name, prompt="ROMEO:", max_tokens=40, temperature=0)
        text = greedy.choices[0].text
        stop = text[10:12] if len(text) >= 12 and text[10:12].strip() else None
        if stop:
            cut = client.completions.create(model=name, prompt="ROMEO:", max_tokens=40, temperature=0, stop=[stop])
            checks["stop"] = cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[:text.index(stop)]

        def raises(exc, fn):
            try:
                fn()
            except exc:
                return True
            except Exception:  # noqa: BLE001
                return False
            return False

        checks["error_401"] = raises(AuthenticationError, lambda: OpenAI(base_url=base, api_key="wrong",
                                                                          max_retries=0).models.list())
        checks["error_404"] = raises(NotFoundError, lambda: client.chat.completions.create(
            model="no-such-model", messages=messages))
        checks["error_400"] = raises(BadRequestError, lambda: client.chat.completions.create(
            model=name, messages=messages, max_tokens=10**7))
        details = {"chat": c0.message.content, "usage": u.model_dump(), "finish_reason": c0.finish_reason,
                   "stream_chunks": chunks}
    finally:
        stop(proc)
        log.close()
    failed = [k for k, v in checks.items() if not v]
    for k, v in checks.items():
        print(f"{'ok  ' if v else 'FAIL'} {k}")
    emit({"ok": not failed, "failed": failed, "checks": len(checks), "run": str(run), **details})


if __name__ == "__main__":
    main()
