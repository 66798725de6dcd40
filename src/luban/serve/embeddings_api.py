"""OpenAI-compatible `POST /v1/embeddings`: a text_embedding run, an encoder folder or a starter encoder.

Works with the official `openai` client (`client.embeddings.create(model=..., input=[...])`; that client asks for
`encoding_format: base64` by default and decodes it itself). `input` is one string or a list of strings (token-id
arrays are refused: luban tokenizes with the model's own tokenizer); `encoding_format` float or base64 (little-endian
float32); `dimensions` below the model's keeps the first N values renormalized to unit length (above it: 400);
`usage.prompt_tokens` counts the tokens the model read (its prefix and special tokens included). luban's extension
`input_type` ("query", the default, or "passage" / "document") picks the model's own prefix (e5's "query: " /
"passage: "). The texts go through the model's micro-batcher with other requests', as /v1/predict's do.
"""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from luban.serve import limits
from luban.serve.auth import require_key
from luban.serve.errors import bad_request
from luban.serve.models import Registry, registry

router = APIRouter(dependencies=[Depends(require_key)], tags=["OpenAI-compatible"])
KIND = {"query": "query", "passage": "passage", "document": "passage"}


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields luban ignores (user, ...)
    model: str | None = Field(None, description="a served model's id (optional when one model embeds)")
    input: str | list = Field(..., description="a text, or a list of texts")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="keep the first N dimensions, renormalized")
    input_type: Literal["query", "passage", "document"] = Field(
        "query", description="luban extension: query, or passage / document (the texts to search)")


def _texts(raw, max_inputs: int, max_chars: int) -> list[str]:
    texts = [raw] if isinstance(raw, str) else raw
    if not texts:
        raise bad_request("input: send a text or a non-empty list of texts", "input", "empty_input")
    if len(texts) > max_inputs:
        raise bad_request(f"{len(texts)} inputs in one request is over the limit of {max_inputs}", "input",
                          "batch_too_large")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise bad_request(f"input[{i}]: expected a string (token-id arrays are not supported: send text)",
                              "input", "invalid_input")
        if not t.strip():
            raise bad_request(f"input[{i}]: empty text", "input", "empty_input")
        limits.check_text(t, i, max_chars)
    return texts


def _vector(v: np.ndarray, dimensions: int | None, fmt: str):
    if dimensions is not None:
        v = v[:dimensions]
        v = v / max(float(np.linalg.norm(v)), 1e-12)
    v = np.asarray(v, "<f4")
    return base64.b64encode(v.tobytes()).decode("ascii") if fmt == "base64" else v.tolist()


@router.post("/v1/embeddings")
async def embeddings(req: EmbeddingRequest, reg: Registry = Depends(registry)):
    m = reg.model_for(req.model, "embed")
    s = reg.settings
    texts = _texts(req.input, s.max_inputs, s.max_text_chars)
    dim = m.predictor.encoder().dim
    if req.dimensions is not None and req.dimensions > dim:
        raise bad_request(f"dimensions = {req.dimensions} is over the model's {dim}", "dimensions",
                          "invalid_dimensions")
    results, batch = await m.batched(texts, {"kind": KIND[req.input_type]}, "input")
    data = [{"object": "embedding", "index": i,
             "embedding": _vector(np.asarray(r["embedding"], np.float32), req.dimensions, req.encoding_format)}
            for i, r in enumerate(results)]
    tokens = int(sum(r.get("tokens", 0) for r in results))
    return JSONResponse({"object": "list", "data": data, "model": m.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                        headers={"x-batch-size": str(batch)})
