"""`luban serve RUN [RUN...]`: one FastAPI app for every task — REST, an OpenAI-compatible API, a web playground.

    LUBAN_API_KEYS=s3cret luban serve runs/sst2 runs/char_lm --port 8000
    curl -s localhost:8000/v1/predict -H 'authorization: Bearer s3cret' -H 'content-type: application/json' \\
         -d '{"model": "sst2", "inputs": ["a gripping, funny film"]}'

Each run is loaded once (`luban.load`, so the ONNX export when the run has one) and warmed before /readyz says
ready. The app never branches on the task: each route asks the model whether it has the capability it needs
(luban.capabilities, isinstance) — predict (micro-batched), text generation (OpenAI-compatible, fairly scheduled),
recommendation, image generation.

One request's path: middleware (MetricsMiddleware -> BrowserGuard (Host, cross-origin) -> CORS -> BodyGuard (size,
time, JSON depth)) -> a module-level handler in routes / openai_api, whose dependencies check the API key
(auth.require_key) and hand it the registry of served models (models.registry, from app.state) -> the registry picks
the model (`model_for(name, capability)`) -> the model's micro-batcher (batching) or generation scheduler
(generation) runs the predictor on the model's own thread -> the JSON answer, or an `{"error": ...}` body
(errors). Modules: settings (ServeSettings, one pydantic model), models (ServedModel, Registry), routes (REST),
openai_api, batching, generation, limits, auth, errors, metrics, origins, docs (Swagger UI from local files);
static/ holds the playground (HTML/CSS/JS, no external requests).
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import asynccontextmanager
from pathlib import Path

from luban.version import __version__
from luban.serve.settings import ServeSettings

STATIC = Path(__file__).parent / "static"
VERSION = __version__  # the API version is luban's (one version string)


def create_app(runs=None, settings: ServeSettings | None = None, predictors: dict | None = None,
               background: bool = False):
    """The app for `runs` (a run directory or a list of them; or settings.runs). Models load here (or, with
    background=True, in a thread started by the app's lifespan: /readyz answers 503 until they are warm).
    `predictors` maps a run path to an already loaded `luban.load` predictor (tests, notebooks)."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.staticfiles import StaticFiles

    from luban.serve import docs, embeddings_api, errors, openai_api, routes
    from luban.serve.auth import KeyChecker
    from luban.serve.limits import BodyGuard
    from luban.serve.metrics import Metrics, MetricsMiddleware
    from luban.serve.models import Registry
    from luban.serve.origins import BrowserGuard

    if settings is None:
        if runs is None:
            raise ValueError("create_app: give runs or settings")
        settings = ServeSettings(runs=[str(r) for r in ([runs] if isinstance(runs, (str, Path)) else runs)])
    settings.check()
    metrics = Metrics()
    registry = Registry(settings, metrics)
    registry.grounder = None
    if settings.kb:  # luban serve --kb: chat completions answered from a knowledge base, with citations
        from luban.serve.grounded import Grounder

        registry.grounder = Grounder(settings)

    @asynccontextmanager
    async def lifespan(app):
        if background:
            registry.load_in_background(on_error=lambda error: _load_failed(app, error), on_ready=_ready)
        yield
        await registry.close(settings.request_timeout)  # drain: queued requests are answered before exit

    app = FastAPI(title="luban", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Serve luban runs: predict, OpenAI-compatible text generation, recommendation, image "
                  "generation. Send `Authorization: Bearer KEY` when the server has API keys.\n\n"
                  "Every route may also answer, before the request reaches it: 400 `json_too_deep` (a JSON body "
                  "nested deeper than the server's limit), 408 `body_timeout` (the body did not arrive in time), "
                  "413 `body_too_large`, 421 `invalid_host` (a Host header the server does not answer for) and "
                  "403 `cross_origin` (a browser write from an origin not allowed by `--cors-origin`); errors are "
                  "`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`. See docs/serving-security.md.")
    # what the routes' dependencies read: the served models (with the settings and metrics) and the API keys
    app.state.registry, app.state.settings, app.state.metrics = registry, settings, metrics
    app.state.keys = KeyChecker(settings.api_keys)
    app.state.on_load_error = None  # `serve` / `app_from_env` hook: stop the server when the models fail to load
    errors.install(app)
    docs.install(app, "luban")
    app.include_router(routes.open_routes)
    app.include_router(routes.api_routes)
    app.include_router(openai_api.router)
    app.include_router(embeddings_api.router)
    app.add_api_route("/", playground, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # middleware: the last added runs first
    if settings.redact:  # innermost: it sees bodies BodyGuard has passed
        from luban.data.redact import Redactor
        from luban.serve.redaction import RedactMiddleware

        app.add_middleware(RedactMiddleware, redactor=Redactor(settings.redact, "tag", settings.redact_ner,
                                                               where="--redact"))
    app.add_middleware(BodyGuard, limit=settings.max_body_bytes, timeout=settings.body_timeout,
                       max_depth=settings.max_json_depth)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"], max_age=600)
    app.add_middleware(BrowserGuard, host=settings.host, extra_hosts=settings.allowed_hosts,
                       cors_origins=settings.cors_origins)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    if not background:
        registry.load_all(predictors)
    return app


async def playground():
    from fastapi.responses import FileResponse

    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def _ready(registry) -> None:
    print(f"ready: {len(registry.models)} model(s) loaded and warm: {', '.join(registry.models)}", flush=True)


def _load_failed(app, error: str) -> None:
    """The models did not load: stop the server through the hook `serve` installs (it then exits with an error),
    or, in an app started elsewhere, say so and stop the process."""
    if app.state.on_load_error is not None:
        app.state.on_load_error(error)
        return
    print(f"error: loading the models failed: {error}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


ERROR_FILE_ENV = "LUBAN_SERVE_ERROR_FILE"  # where a `--workers` process leaves the error that stopped it


def app_from_env():
    """uvicorn's factory in each `--workers` process: the settings come from the parent's environment."""
    from luban.serve.protocol import HeaderDeadline

    settings = ServeSettings.from_env()
    HeaderDeadline.timeout = settings.body_timeout
    app = create_app(settings=settings, background=True)
    error_file = os.environ.get(ERROR_FILE_ENV)
    if error_file:
        def failed(error: str) -> None:  # exit code 3 (uvicorn's startup failure): the supervisor stops, no restart
            Path(error_file).write_text(error, encoding="utf-8")
            os._exit(3)

        app.state.on_load_error = failed
    return app


def check_runs(runs: list[str]) -> None:
    """Before the server starts: every run is finished and its config.yaml reads and validates (a corrupt run is
    one `error:` line and exit code 2, not a server that starts and dies)."""
    from luban.config import read_yaml, validate
    from luban.rundir import check_finished

    from luban.embedding.encoder import resolve_ref
    from luban.predictor import is_encoder_ref

    for r in runs:
        if is_encoder_ref(r):  # an encoder folder or starter name, served for /v1/embeddings without a run
            resolve_ref(r)
            continue
        path = check_finished(r)  # a typo fails here, before the server starts
        validate(read_yaml(path / "config.yaml"), str(path / "config.yaml"))


def serve(runs, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          workers: int = 1, graceful_timeout: float = 30.0) -> None:
    try:
        import uvicorn
    except ImportError:
        from luban.errors import LubanError

        raise LubanError("serving needs fastapi and uvicorn: pip install 'luban[serve]'") from None
    from luban.errors import LubanError

    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    check_runs(runs)
    settings = settings or ServeSettings()
    settings.runs = [str(r) for r in runs]
    settings.host = host
    settings.check()
    from luban.serve.protocol import HeaderDeadline

    HeaderDeadline.timeout = settings.body_timeout  # request headers, like bodies, arrive in time or the line closes
    kw = dict(host=host, port=port, log_level="warning", timeout_graceful_shutdown=graceful_timeout,
              server_header=False, limit_concurrency=settings.max_connections, timeout_keep_alive=5,
              http=HeaderDeadline)
    sock = listen(host, port)  # bound and listening before "serving on" is printed (a busy port: a clear error)
    try:
        if workers > 1:
            import tempfile

            from uvicorn.supervisors import Multiprocess

            from luban.serve.settings import ENV

            os.environ[ENV] = settings.to_env()
            with tempfile.TemporaryDirectory(prefix="luban-serve-") as tmp:
                os.environ[ERROR_FILE_ENV] = error_file = os.path.join(tmp, "error")
                config = uvicorn.Config("luban.serve.app:app_from_env", factory=True, workers=workers, **kw)
                _announce(runs, host, port, settings)
                Multiprocess(config, sockets=[sock]).run()
                error = Path(error_file).read_text(encoding="utf-8") if os.path.exists(error_file) else None
            if error:
                raise LubanError(f"loading the models failed: {error}")
            return
        app = create_app(settings=settings, background=True)
        server = uvicorn.Server(uvicorn.Config(app, **kw))
        app.state.on_load_error = lambda error: setattr(server, "should_exit", True)  # then the error below, exit 2
        _announce(runs, host, port, settings)
        server.run(sockets=[sock])
    finally:
        sock.close()
    registry = app.state.registry
    if registry.error:
        raise LubanError(f"loading the models failed: {registry.error}")
    if not server.started:
        raise LubanError("the server did not start (see the messages above)")


def listen(host: str, port: int):
    """A TCP socket bound to host:port and listening (what uvicorn would bind), or a LubanError naming the port."""
    import socket

    from luban.errors import LubanError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise LubanError(f"cannot listen on {host}:{port}: {e.strerror or e} (another server on that port? pick "
                         "another --port)") from None
    sock.set_inheritable(True)  # --workers: the worker processes accept on it
    return sock


def _announce(runs, host: str, port: int, settings: ServeSettings) -> None:
    auth = f"API keys on ({len(settings.api_keys)})" if settings.api_keys else "no API keys (open)"
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {', '.join(map(str, runs))} on http://{shown}:{port}  ({auth}; playground /, API /v1/..., "
          "docs /docs; /readyz once the models are warm)", flush=True)
