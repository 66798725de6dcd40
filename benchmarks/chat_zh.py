"""A real chat model answering Chinese questions through `luban generate`, `luban serve` (the OpenAI chat API) and
the playground, with a screenshot of the playground taken by headless Chromium.

    python benchmarks/chat_zh.py RUN [--screenshot docs/images/playground_chat_zh.png]

RUN is a text-generation run of a chat model, e.g. the imported Qwen2.5-Coder-0.5B-Instruct as is: the `qwen-before`
run `benchmarks/llm_sft.py --out DIR` keeps (`finetune: none`). The answers are greedy (temperature 0). The
screenshot drives the playground page the server ships (http://HOST:PORT/) over the Chrome DevTools protocol: the
question is typed into the chat box, Send is clicked, and the page is captured once the streamed reply has finished.
"""

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, free_port, stop  # noqa: E402

QUESTIONS = ["中国的首都是哪里？请用一句话回答。", "请用两三句话介绍一下长城。", "用Python写一个函数，返回列表中所有偶数的和。",
             "把“今天天气很好，我们去公园散步吧。”翻译成英文。"]


def luban_cmd() -> list[str]:
    return [sys.executable, "-m", "luban"]


def post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_ready(url: str, seconds: float = 600) -> None:
    end = time.time() + seconds
    while time.time() < end:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {seconds} s")


class DevTools:
    """The smallest Chrome DevTools protocol client: one page target over a stdlib WebSocket."""

    def __init__(self, ws_url: str):
        host, rest = ws_url.removeprefix("ws://").split("/", 1)
        h, p = host.split(":")
        self.sock = socket.create_connection((h, int(p)), timeout=600)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(head.decode(errors="replace"))
        self.next_id = 0

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("devtools connection closed")
            buf += chunk
        return buf

    def _recv(self) -> dict:
        data = b""
        while True:
            b0, b1 = self._recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            data += self._recv_exact(n)
            if b0 & 0x80:
                return json.loads(data)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                                if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            msg = self._recv()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                         returnByValue=True).get("result", {}).get("value")


def screenshot(page_url: str, question: str, out: Path, timeout: float = 600) -> str:
    """Ask `question` in the playground's chat box and capture the page once the reply has streamed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise FileNotFoundError("no chromium on PATH")
    port = free_port()
    profile = tempfile.mkdtemp(prefix="luban-chromium-")
    proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                             f"--remote-debugging-port={port}", "--window-size=1100,900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        dt = DevTools(pages[0]["webSocketDebuggerUrl"])
        dt.call("Page.enable")
        dt.call("Emulation.setDeviceMetricsOverride", width=1100, height=900, deviceScaleFactor=1, mobile=False)
        dt.call("Page.navigate", url=page_url)
        find = ("[...document.querySelectorAll('textarea')].find(a => a.placeholder.startsWith('your message'))")
        for _ in range(300):
            if dt.js(f"!!({find})"):
                break
            time.sleep(0.2)
        dt.js(f"(() => {{ const a = {find}; a.value = {json.dumps(question)};"
              " const t = [...document.querySelectorAll('input[type=range]')][0]; if (t) { t.value = 0;"
              " t.dispatchEvent(new Event('input')); }"
              " [...document.querySelectorAll('button')].find(b => b.textContent === 'Send').click(); })()")
        end = time.time() + timeout
        while time.time() < end:
            time.sleep(1)
            if dt.js("[...document.querySelectorAll('.usage')].some(u => u.textContent.includes('finish'))"):
                break
        time.sleep(0.5)
        reply = dt.js("(document.querySelector('.msg.assistant .reply') || {}).textContent || ''")
        png = dt.call("Page.captureScreenshot", format="png")["data"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(png))
        return reply
    finally:
        stop(proc)
        shutil.rmtree(profile, ignore_errors=True)


def generate(a) -> dict:
    gen = subprocess.run(luban_cmd() + ["generate", a.run, "--prompt", QUESTIONS[0], "--temperature", "0",
                                        "--max-new-tokens", str(a.max_tokens)], capture_output=True, text=True)
    if gen.returncode != 0:
        sys.exit(f"luban generate failed: {gen.stderr[-2000:]}")
    out = {"prompt": QUESTIONS[0], "text": gen.stdout.strip(), "stats": gen.stderr.strip()[-200:]}
    print(json.dumps(out, ensure_ascii=False), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--screenshot", default=None, help="PNG path for the playground screenshot")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--questions", type=int, default=len(QUESTIONS), help="how many of the questions to ask")
    ap.add_argument("--no-generate", action="store_true", help="skip the `luban generate` check")
    ap.add_argument("--request-timeout", default="1800", help="the server's per-request limit (slow CPUs)")
    a = ap.parse_args()

    t0 = time.perf_counter()
    result = {}
    if not a.no_generate:
        result["generate"] = generate(a)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(luban_cmd() + ["serve", a.run, "--port", str(port), "--request-timeout",
                                             str(a.request_timeout)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, 1800)
        model = json.loads(urllib.request.urlopen(url + "/v1/models", timeout=30).read())["data"][0]["id"]
        answers = []
        for q in QUESTIONS[: a.questions]:
            t1 = time.perf_counter()
            r = post(url + "/v1/chat/completions", {"model": model, "temperature": 0, "max_tokens": a.max_tokens,
                                                    "messages": [{"role": "user", "content": q}]})
            answers.append({"question": q, "answer": r["choices"][0]["message"]["content"],
                            "finish_reason": r["choices"][0]["finish_reason"],
                            "completion_tokens": r["usage"]["completion_tokens"],
                            "seconds": round(time.perf_counter() - t1, 1)})
            print(json.dumps(answers[-1], ensure_ascii=False), flush=True)
        result["serve"] = answers
        if a.screenshot:
            reply = screenshot(url + "/", QUESTIONS[1], Path(a.screenshot))
            result["screenshot"] = {"path": a.screenshot, "question": QUESTIONS[1], "reply": reply}
    finally:
        stop(server)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    emit(result)


if __name__ == "__main__":
    main()
