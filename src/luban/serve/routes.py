"""The REST routes: models, predict (JSON or multipart uploads), recommend, image generation, health, metrics.

Module-level handlers on two routers: `open_routes` (health, readiness) and `api_routes` (behind the API key,
`auth.require_key`). Each reads the served models through the `registry` dependency (serve.models) and asks the
model it picked whether it has the capability the route needs (`Registry.model_for(name, "predict")`, an isinstance
check of luban.capabilities); none looks at task names. Client mistakes are 4xx with
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.formparsers import MultiPartException

from luban.errors import LubanError
from luban.serve import limits
from luban.serve.auth import require_key
from luban.serve.errors import INPUT_ERRORS, ApiError, bad_request, client_error
from luban.serve.models import Registry, ServedModel, registry
from luban.serve.settings import ServeSettings

# ------------------------------------------------------------------------------------------------ schemas (docs)


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="a served model's id (GET /v1/models); optional with one model")
    inputs: list[Any] = Field(..., min_length=1, description="texts, JSON records or ids, or base64-encoded image / "
                              "audio files (data: URLs welcome), as the model's capabilities.inputs says",
                              examples=[["this movie was great", "a waste of time"]])
    top_k: int | None = Field(None, ge=1, le=1000, description="classes (or items) per result")


PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {
                "type": "object", "additionalProperties": False, "required": ["inputs"],
                "properties": {
                    "model": {"type": "string", "description": "a served model's id (optional with one model)"},
                    "inputs": {"type": "array", "items": {}, "minItems": 1,
                               "description": "texts, JSON records or ids, or base64 image/audio files"},
                    "top_k": {"type": "integer", "minimum": 1, "maximum": 1000}}}},
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {
                    "model": {"type": "string"},
                    "top_k": {"type": "integer", "minimum": 1},
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                              "description": "image or audio files, one result each"},
                    "inputs": {"type": "array", "items": {"type": "string"},
                               "description": "text inputs (for text models)"}}}},
        },
    },
    "responses": {"200": {"description": "one prediction per input, in order",
                          "content": {"application/json": {"schema": {
                              "type": "object", "properties": {
                                  "model": {"type": "string"},
                                  "predictions": {"type": "array", "items": {"type": "object"}}}}}}}},
}


class RecommendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    user: str | int | None = Field(None, description="a user id (unknown users get the fallback strategy)")
    item: str | int | None = Field(None, description="instead of user: items similar to this one")
    history: list[str | int] | str | None = Field(None, description="items the user just interacted with")
    k: int | None = Field(None, ge=1, description="how many items (default: the run's recommendation.k)")
    exclude_seen: bool | None = None
    features: dict[str, Any] | None = Field(None, description="user features for a new user (two-tower)")


class ImagesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    n: int = Field(16, ge=1, description="how many images")
    label: str | int | None = Field(None, description="the class to draw (conditional models); default: all")
    prompt: str | None = Field(None, description="alias of label (OpenAI's field name)")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="default: a random seed (returned)")
    response_format: str = Field("b64_json", pattern="^b64_json$")


# ------------------------------------------------------------------------------------------------ the routes

open_routes = APIRouter()
api_routes = APIRouter(dependencies=[Depends(require_key)])


@open_routes.get("/healthz", tags=["operations"], summary="liveness: the process answers")
async def healthz():
    return {"status": "ok"}


@open_routes.get("/readyz", tags=["operations"], summary="readiness: every model loaded and warm",
                 responses={503: {"description": "still loading, or loading failed"}})
async def readyz(reg: Registry = Depends(registry)):
    if reg.ready:
        return {"status": "ready", "models": list(reg.models)}
    status = "failed" if reg.error else "loading"
    return JSONResponse({"status": status, "error": reg.error, "models": list(reg.models)},
                        status_code=503, headers={"Retry-After": "2"})


# the first version's routes, kept for the README and `make demo`
@open_routes.get("/health", tags=["operations"], deprecated=True, summary="use /healthz")
async def health():
    return {"status": "ok"}


@api_routes.get("/info", tags=["models"], deprecated=True, summary="the first model's task, labels and test metrics "
                "(see /v1/models)")
async def info(model: str | None = None, reg: Registry = Depends(registry)):
    m = reg.model_for(model, "predict") if model else reg.first()
    return {"run": m.name, "task": m.caps["task"], "model": m.model_type, "labels": m.caps.get("labels"),
            "test_metrics": m.test_metrics}


@api_routes.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
async def prometheus(reg: Registry = Depends(registry)):
    return Response(reg.metrics.render(), media_type=reg.metrics.content_type)


@api_routes.get("/v1/models", tags=["models"], summary="the served models and what each can do")
async def list_models(reg: Registry = Depends(registry)):
    return {"object": "list", "data": [m.describe() for m in reg.models.values()]}


@api_routes.get("/v1/models/{model_id}", tags=["models"], summary="one served model")
async def get_model(model_id: str, reg: Registry = Depends(registry)):
    if model_id not in reg.models:
        raise ApiError(404, f"the model {model_id!r} does not exist", "invalid_request_error", "model_id",
                       "model_not_found")
    return reg.models[model_id].describe()


@api_routes.post("/v1/predict", tags=["predict"], openapi_extra=PREDICT_OPENAPI,
                 summary="predictions for a batch of inputs (JSON), or for uploaded image / audio files (multipart)")
async def predict(request: Request, reg: Registry = Depends(registry)):
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        name, raw, names, options = await _read_multipart(request, reg.settings)
    elif ctype in ("application/json", "") or ctype.endswith("+json"):
        name, raw, options = await _read_json(request)
        names = None
    else:
        raise ApiError(415, f"unsupported content type {ctype!r}: send application/json or "
                       "multipart/form-data", "invalid_request_error", None, "unsupported_media_type")
    m = reg.model_for(name, "predict")
    return await run_predict(reg, m, raw, names, options)


@api_routes.post("/predict", tags=["predict"], deprecated=True,
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": PREDICT_OPENAPI["requestBody"]["content"]["application/json"]}}},
                 summary="the first version's predict route: like /v1/predict (JSON), errors as {\"detail\": ...}")
async def legacy_predict(request: Request, reg: Registry = Depends(registry)):
    name, raw, options = await _read_json(request)
    return await run_predict(reg, reg.model_for(name, "predict"), raw, None, options)


async def run_predict(reg: Registry, m: ServedModel, raw: list, names: list[str] | None, options: dict):
    """One request's inputs through the model's micro-batcher: checked against the limits, decoded as the model's
    inputs say (texts, images, audio, JSON), predicted in a batch with other requests', one result each."""
    s = reg.settings
    if not raw:
        raise ApiError(422, "no inputs: send at least one (a JSON list of inputs, or multipart files / inputs "
                       "fields)", "invalid_request_error", "inputs", "empty_inputs")
    if len(raw) > s.max_inputs:
        raise ApiError(422, f"{len(raw)} inputs in one request is over the limit of {s.max_inputs}",
                       "invalid_request_error", "inputs", "batch_too_large")
    bad_opts = [k for k in options if k not in m.caps["predict_options"]]
    if bad_opts:
        raise bad_request(f"model {m.name!r} does not take {bad_opts[0]}", bad_opts[0], "unsupported_option",
                          422)
    inputs = prepare_inputs(s, m.caps["inputs"], raw, names)
    results, batch = await m.batched(inputs, options, "inputs")
    if names:
        results = [_named(r, f"input {i + 1}", names[i]) for i, r in enumerate(results)]
    return JSONResponse({"model": m.name, "predictions": results}, headers={"x-batch-size": str(batch)})


def prepare_inputs(s: ServeSettings, kind, raw: list, names: list[str] | None) -> list:
    out = []
    for i, v in enumerate(raw):
        if kind == "text":
            limits.check_text(v, i, s.max_text_chars)
            out.append(v)
        elif kind == "image":
            data = v if isinstance(v, bytes) else limits.b64_bytes(v, i)
            out.append(limits.decode_image(data, i, s.max_image_pixels, names[i] if names else None))
        elif kind == "audio":
            data = v if isinstance(v, bytes) else limits.b64_bytes(v, i)
            out.append(limits.decode_audio(data, i, s.max_audio_seconds, names[i] if names else None))
        elif kind == "json":
            out.append(v)
        else:  # a task that does not say what it takes: JSON values, but never a path to a file here
            limits.reject_paths(v, i)
            out.append(v)
    return out


async def _read_json(request: Request):
    body = await request.body()
    try:
        data = json.loads(body) if body else None
    except ValueError:
        raise bad_request("the request body is not valid JSON", None, "json_invalid", 422) from None
    if not isinstance(data, dict):
        raise bad_request('expected a JSON object: {"inputs": [...], "model": "...", "top_k": 3}', None,
                          "invalid_body", 422)
    unknown = sorted(set(data) - {"model", "inputs", "top_k"})
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}; use inputs, model, top_k", unknown[0],
                          "unknown_field", 422)
    if "inputs" not in data:
        raise bad_request("inputs: required (a list of inputs)", "inputs", "missing", 422)
    inputs = data["inputs"]
    if isinstance(inputs, (str, dict)):  # one input
        inputs = [inputs]
    if not isinstance(inputs, list):
        raise bad_request("inputs: expected a list of inputs", "inputs", "invalid_type", 422)
    name = data.get("model")
    if name is not None and not isinstance(name, str):
        raise bad_request("model: expected a string", "model", "invalid_type", 422)
    return name, inputs, _options(data)


async def _read_multipart(request: Request, s: ServeSettings):
    from starlette.datastructures import UploadFile

    try:
        form = await request.form(max_files=s.max_inputs, max_fields=s.max_inputs + 8)
    except MultiPartException as e:
        raise bad_request(f"bad multipart body: {e.message}", None, "bad_multipart", 422) from None
    except (ValueError, KeyError, AssertionError) as e:
        raise bad_request(f"bad multipart body: {e}", None, "bad_multipart", 422) from None
    raw, names, data = [], [], {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):  # an upload
            raw.append(await value.read())
            names.append(value.filename or f"upload {len(raw)}")
        elif key == "inputs":
            raw.append(value)
            names.append(f"input {len(raw)}")
        elif key in ("model", "top_k"):
            data[key] = value
        else:
            raise bad_request(f"unknown form field {key!r}; use files, inputs, model, top_k", key,
                              "unknown_field", 422)
    await form.close()
    if "top_k" in data:
        try:
            data["top_k"] = int(data["top_k"])
        except ValueError:
            raise bad_request("top_k: expected an integer", "top_k", "invalid_type", 422) from None
    return data.get("model"), raw, names, _options(data)


def _options(data: dict) -> dict:
    top_k = data.get("top_k")
    if top_k is None:
        return {}
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 1000:
        raise bad_request("top_k: expected an integer from 1 to 1000", "top_k", "invalid_value", 422)
    return {"top_k": top_k}


@api_routes.post("/v1/recommend", tags=["recommend"],
                 summary="top-k items for a user (with recent history or features), or items similar to an item")
async def recommend(body: RecommendBody, reg: Registry = Depends(registry)):
    s = reg.settings
    m = reg.model_for(body.model, "recommend")
    if (body.user is None) == (body.item is None):
        raise bad_request("give exactly one of user (recommendations) or item (similar items)", "user",
                          "invalid_value", 422)
    if body.k is not None and body.k > s.max_k:
        raise bad_request(f"k = {body.k} is over the limit of {s.max_k}", "k", "k_too_large", 422)
    p = m.predictor
    try:
        if body.item is not None:
            res = await m.call(p.similar_items, body.item, k=body.k)
        else:
            res = await m.call(p.recommend, body.user, k=body.k, history=body.history,
                               exclude_seen=body.exclude_seen, features=body.features)
    except ApiError:
        raise
    except (LubanError,) + INPUT_ERRORS as e:
        raise client_error(e, "user" if body.user is not None else "item") from None
    return {"model": m.name, **res}


@api_routes.post("/v1/images/generations", tags=["generate"], summary="images from a generative image model "
                 "(PNG, base64)")
async def generate_images(body: ImagesBody, reg: Registry = Depends(registry)):
    s = reg.settings
    m = reg.model_for(body.model, "generate_images")
    if body.n > s.max_images:
        raise bad_request(f"n = {body.n} is over the limit of {s.max_images}", "n", "n_too_large", 422)
    label = body.label if body.label is not None else (body.prompt or None)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    try:
        res = await m.call(m.predictor.generate, n=body.n, label=label, seed=seed)
    except ApiError:
        raise
    except (LubanError,) + INPUT_ERRORS as e:
        raise client_error(e, "label") from None
    arrays = res.get("arrays")
    pngs = [png_b64(a) for a in arrays] if arrays is not None else []
    labels = res.get("classifier_labels") or [None] * len(pngs)
    return {"created": int(time.time()), "model": m.name, "seed": seed, "label": res.get("label"),
            "mean_confidence": res.get("mean_confidence"),
            "data": [{"b64_json": p, "classifier_label": lab} for p, lab in zip(pngs, labels, strict=False)]}


def _named(result, placeholder: str, name: str):
    """Uploads: the predictor calls in-memory inputs "input N"; give the caller's file name instead."""
    if isinstance(result, dict) and placeholder != name:
        return {k: (name if v == placeholder else v) for k, v in result.items()}
    return result


def png_b64(arr) -> str:
    import numpy as np
    from PIL import Image

    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------------------ explain (trust)

EXPLAIN_MAX_INPUTS = 16  # each explanation runs the model tens of times (integrated gradients)


class ExplainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="a served model's id; optional with one model that explains")
    inputs: list[Any] = Field(..., min_length=1, description="texts, JSON records (tabular) or base64 images, as "
                              "for /v1/predict", examples=[["服务很好，房间干净"]])
    target: str | None = Field(None, description="the class to explain (default: each input's predicted class)")


@api_routes.post("/v1/explain", tags=["predict"], summary="per-prediction attributions: token / character scores "
                 "of a text, feature scores of a row, a pixel overlay (PNG, base64) of an image")
async def explain(body: ExplainBody, reg: Registry = Depends(registry)):
    from luban.explain import to_json

    s = reg.settings
    m = reg.model_for(body.model, "explain")
    limit = min(s.max_inputs, EXPLAIN_MAX_INPUTS)
    if len(body.inputs) > limit:
        raise ApiError(422, f"{len(body.inputs)} inputs in one explain request is over the limit of {limit}",
                       "invalid_request_error", "inputs", "batch_too_large")
    inputs = prepare_inputs(s, m.caps["inputs"], body.inputs, None)
    try:
        res = await m.call(m.predictor.explain, inputs, target=body.target)
    except ApiError:
        raise
    except (LubanError,) + INPUT_ERRORS as e:
        raise client_error(e, "target" if body.target is not None and "target" in str(e) else "inputs") from None
    return {"model": m.name, "explanations": [to_json(r) for r in res]}
