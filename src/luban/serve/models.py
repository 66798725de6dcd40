"""The served models: each run directory loaded once (`luban.load`, so the ONNX export when the run has one), warmed,
and given its own thread, micro-batcher and generation scheduler; the `Registry` of them is what every route reads
(`registry(request)`, a FastAPI dependency).

The server never looks at task names: what a model offers is the capabilities its predictor implements
(luban.capabilities: `Predicts`, `GeneratesText`, `Recommends`, `GeneratesImages`, checked with isinstance through
`Predictor.supports`), and the routes follow that; `/v1/models` describes them (`Predictor.capabilities()`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import Request

from luban.capabilities import (Chats, DecodesTogether, Embeds, Explains, GeneratesImages, GeneratesText, Predicts,
                                Recommends)
from luban.errors import LubanError
from luban.serve.batching import MicroBatcher, QueueFull
from luban.serve.errors import INPUT_ERRORS, ApiError, bad_request, client_error, overloaded
from luban.serve.generation import GenerationScheduler
from luban.serve.metrics import Metrics
from luban.serve.settings import ServeSettings

# what a route needs of a model: the capability, and how its errors say it
NEEDS = {"predict": Predicts, "generate_text": GeneratesText, "recommend": Recommends,
         "generate_images": GeneratesImages, "embed": Embeds, "explain": Explains}
WHAT = {"predict": "predict", "generate_text": "generate text", "recommend": "recommend",
        "generate_images": "generate images", "embed": "embed texts", "explain": "explain its predictions"}
HINT = {"predict": "; see GET /v1/models for what each model offers"}


class ServedModel:
    def __init__(self, name: str, run_dir: Path, predictor, settings: ServeSettings, metrics: Metrics,
                 replicas: list | None = None):
        """`predictor` serves everything; `replicas` (more loaded copies of the same run) take predict batches
        beside it, each on its own thread."""
        self.name, self.run_dir, self.predictor = name, Path(run_dir), predictor
        self.settings, self.metrics = settings, metrics
        self.caps = predictor.capabilities()  # what /v1/models says; routes check the capabilities themselves
        # an encoder served without a run (luban.predictor.load_encoder_model) has no metrics.json: its folder's time
        stamp = self.run_dir / "metrics.json"
        self.created = int((stamp if stamp.exists() else self.run_dir).stat().st_mtime)
        try:
            m = json.loads((self.run_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            m = {}
        self.test_metrics = {k: v for k, v in (m.get("test") or {}).items() if isinstance(v, (int, float))}
        if not self.caps.get("labels") and isinstance((m.get("data") or {}).get("labels"), list):
            self.caps["labels"] = [str(x) for x in m["data"]["labels"]]
        self.model_type = predictor.config.model.type
        self.predictors = [predictor] + list(replicas or [])
        self.executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"luban-{name}-{i}")
                          for i in range(len(self.predictors))]
        self.executor = self.executors[0]  # generation and direct calls (recommend, images) run here
        self.calls = 0  # direct calls queued or running on that thread
        if settings.threads and "torch" in sys.modules:  # a model on torch (an ONNX-only server never imports it)
            import torch

            torch.set_num_threads(settings.threads)
            for ex in self.executors:
                ex.submit(torch.set_num_threads, settings.threads).result()
        self.batcher = MicroBatcher(max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
                                    max_queue=settings.max_queue,
                                    replicas=[(self._predictor_fn(p), ex)
                                              for p, ex in zip(self.predictors, self.executors, strict=True)],
                                    on_batch=lambda n, r, s: (metrics.batch_size.labels(name).observe(n),
                                                              metrics.batch_requests.labels(name).observe(r),
                                                              metrics.batch_seconds.labels(name).observe(s)),
                                    on_depth=lambda d: metrics.queue_depth.labels(name).set(d))
        self.generation = GenerationScheduler(
            self.executor, settings.max_active_generations, settings.max_queued_generations,
            on_change=lambda a, q: (metrics.gen_active.labels(name).set(a), metrics.gen_queued.labels(name).set(q)),
            on_tokens=lambda n: metrics.tokens.labels(name).inc(n),
            batcher=(self.predictor.stream_events_batch
                     if predictor.supports(DecodesTogether) and settings.batch_generations else None),
            on_step=lambda n: metrics.gen_batch_size.labels(name).observe(n))

    # what /v1/models says about it
    def describe(self) -> dict:
        c = self.caps
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "luban",
                "task": c["task"], "model_type": self.model_type, "backend": c["backend"],
                "capabilities": {k: c[k] for k in ("predict", "inputs", "predict_options", "generate_text",
                                                   "stream_text", "chat", "generate_images", "recommend",
                                                   "similar_items", "embed", "explain")},
                "labels": c.get("labels"), "test_metrics": self.test_metrics,
                **({"generation": self.generation_defaults()} if self.generates_text else {})}

    def generation_defaults(self) -> dict:
        """The run's own decoding settings (its `generation:` section), what a request that names none gets; the
        playground's sliders start there. max_tokens is capped by the server's limit."""
        p = self.predictor
        if not isinstance(p, GeneratesText):
            return {}
        g = p.generation_defaults()
        greedy = g.do_sample is False or g.temperature == 0
        return {"temperature": 0.0 if greedy else g.temperature, "top_k": g.top_k or 0, "top_p": g.top_p or 1.0,
                "repetition_penalty": g.repetition_penalty,
                "max_tokens": min(p.default_max_new_tokens() or g.max_new_tokens, self.settings.max_tokens),
                "max_tokens_limit": self.settings.max_tokens, "stop": list(g.stop), "seed": g.seed}

    def can(self, need: str) -> bool:
        """Whether the model has the capability a route needs ("predict", "generate_text", ...)."""
        return self.predictor.supports(NEEDS[need])

    @property
    def generates_text(self) -> bool:
        return self.predictor.supports(GeneratesText)

    @property
    def chats(self) -> bool:
        return self.predictor.supports(Chats)

    async def call(self, fn, *args, **kw):
        """Run fn on the model's thread (after its queued forward passes), with the request timeout."""
        loop = asyncio.get_running_loop()
        if self.calls >= self.batcher.max_queue:
            raise overloaded(f"model {self.name!r} is busy ({self.calls} requests waiting); retry shortly")
        self.calls += 1
        fut = loop.run_in_executor(self.executor, lambda: fn(*args, **kw))
        fut.add_done_callback(self._call_done)
        timeout = self.settings.request_timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than {timeout:g} s", "timeout", None, "timeout") from None

    async def batched(self, inputs: list, options: dict, param: str) -> tuple[list, int]:
        """`inputs` through the micro-batcher with other requests' (the results and the forward pass's size), the
        queue, timeout and input errors turned into the API's (503, 504, 422 naming `param`)."""
        s = self.settings
        try:
            return await asyncio.wait_for(self.batcher.submit(inputs, options), s.request_timeout)
        except QueueFull as e:
            self.metrics.rejected.labels(self.name).inc()
            raise overloaded(f"model {self.name!r} is busy ({e.depth} inputs waiting); retry shortly",
                             int(e.retry_after + 0.999)) from None
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than {s.request_timeout:g} s", "timeout", None,
                           "timeout") from None
        except (LubanError,) + INPUT_ERRORS as e:
            raise client_error(e, param) from None

    def _call_done(self, _) -> None:
        self.calls -= 1

    @staticmethod
    def _predictor_fn(predictor):
        def predict_batch(inputs: list, options: dict) -> list:
            """One micro-batch, in one predict() call: the task batches it for its model itself (texts in
            length-sorted batches that pad little: luban.data.batching.inference_batches)."""
            return predictor.predict(inputs, **options)

        return predict_batch

    def warm(self) -> None:
        """One small request through each capability, on the model's thread, so the first client is not slow
        (lazy initialisation, onnxruntime's first run, allocator warm-up)."""
        import numpy as np

        from luban.errors import LubanError

        example = {"text": ["warm up"], "image": [np.full((32, 32, 3), 128, np.uint8)],
                   "audio": [(np.zeros(8000, np.float32), 16000)]}.get(self.caps["inputs"])

        def run(p):
            try:
                if self.can("predict") and example is not None and not self.generates_text:
                    p.predict(example)
                if self.generates_text and p is self.predictor:
                    for _ in p.stream_events("warm up", max_new_tokens=2):
                        pass
            except (LubanError, ValueError, TypeError, KeyError, RuntimeError):
                pass  # warming is best effort: the model loaded, and real requests report their own errors

        for p, ex in zip(self.predictors, self.executors, strict=True):
            ex.submit(run, p).result()

    async def close(self, timeout: float) -> None:
        await self.batcher.close(timeout)
        await self.generation.close(timeout)
        for ex in self.executors:
            ex.shutdown(wait=False)


class Registry:
    """The models of one server, by name; loaded in the foreground (tests) or a background thread (the CLI, so
    /healthz answers while large models load and /readyz turns 200 only once every model is warm)."""

    def __init__(self, settings: ServeSettings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.models: dict[str, ServedModel] = {}
        self.ready = False
        self.error: str | None = None
        self.started = time.time()
        self._thread: threading.Thread | None = None

    def names_for(self, runs: list[str]) -> list[str]:
        names, seen = [], {}
        for r in runs:
            base = Path(r).resolve().name
            seen[base] = seen.get(base, 0) + 1
            names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
        return names

    def model_for(self, name: str | None, need: str, param: str = "model") -> ServedModel:
        """The model a request names (or the only one that can do `need`); 404 for an unknown name, 503 while
        loading."""
        if not self.ready:
            if self.error:
                raise ApiError(503, f"the server failed to load its models: {self.error}", "server_error", None,
                               "load_failed")
            raise ApiError(503, "models are still loading; retry shortly", "overloaded", None, "loading",
                           {"Retry-After": "2"})
        able = [m for m in self.models.values() if m.can(need)]
        if name is None:
            if len(able) == 1:
                return able[0]
            if not able:
                raise bad_request(f"no served model can {WHAT[need]}", param, "model_not_supported")
            raise bad_request(f"several models can {WHAT[need]}; name one with \"model\": "
                              f"{', '.join(m.name for m in able)}", param, "model_required")
        if not isinstance(name, str) or name not in self.models:
            raise ApiError(404, f"the model {name!r} does not exist; served: {', '.join(self.models)}",
                           "invalid_request_error", param, "model_not_found")
        m = self.models[name]
        if not m.can(need):
            raise bad_request(f"model {name!r} (task {m.caps['task']}) cannot {WHAT[need]}{HINT.get(need, '')}",
                              param, "model_not_supported")
        return m

    def first(self) -> ServedModel:
        """The first model (the legacy /info route), or the 503 while loading."""
        if not self.ready:
            self.model_for(None, "predict")  # 503: still loading (or failed)
        return next(iter(self.models.values()))

    def add(self, name: str, run_dir, predictor, replicas: list | None = None) -> ServedModel:
        m = ServedModel(name, Path(run_dir), predictor, self.settings, self.metrics, replicas)
        self.models[name] = m
        return m

    def load_all(self, predictors: dict | None = None) -> None:
        from luban.predictor import load

        if self.settings.threads:  # before loading: onnxruntime sessions take their thread count at creation
            from luban.compress.onnx_runtime import set_session_threads

            set_session_threads(self.settings.threads)
        try:
            for name, run in zip(self.names_for(self.settings.runs), self.settings.runs, strict=True):
                given = (predictors or {}).get(run)
                p = given or load(run, device=self.settings.device, backend=self.settings.backend)
                extra = []
                if given is None and p.supports(Predicts):  # more copies for predict batches
                    extra = [load(run, device=self.settings.device, backend=self.settings.backend)
                             for _ in range(self.settings.replicas - 1)]
                m = self.add(name, run, p, extra)
                if self.settings.warmup:
                    m.warm()
            # everything loaded so far lives as long as the server: keep it out of the garbage collector's scans
            # (a full collection over torch/transformers' objects otherwise stalls requests for 100s of ms)
            gc.collect()
            gc.freeze()
            self.ready = True
            self.metrics.ready.set(1)
        except Exception as e:  # noqa: BLE001 - reported by /readyz and the CLI
            self.error = str(e) or f"{type(e).__name__}: {e}"
            raise

    def load_in_background(self, on_error=None, on_ready=None) -> None:
        def target():
            try:
                self.load_all()
            except Exception:  # noqa: BLE001
                if on_error:
                    on_error(self.error)
                return
            if on_ready:
                on_ready(self)

        self._thread = threading.Thread(target=target, name="luban-loader", daemon=True)
        self._thread.start()

    async def close(self, timeout: float) -> None:
        for m in list(self.models.values()):
            await m.close(timeout)


def registry(request: Request) -> Registry:
    """The FastAPI dependency of every route that reads the served models (and, through them, the settings and
    metrics): the app's registry, set by create_app."""
    return request.app.state.registry
