"""`POST /v1/embeddings` (OpenAI-compatible) on an encoder folder served without a run, through the official
`openai` client and raw HTTP: float and base64, dimensions, usage, batching, errors."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from luban.embedding import load_encoder  # noqa: E402
from luban.serve.app import create_app  # noqa: E402
from luban.serve.settings import ServeSettings  # noqa: E402


@pytest.fixture(scope="module")
def client(tiny_bert):
    app = create_app(settings=ServeSettings(runs=[str(tiny_bert)], api_keys=["k"], max_wait_ms=2.0))
    with TestClient(app) as c:
        c.headers["Authorization"] = "Bearer k"
        yield c


def test_the_openai_client_gets_the_encoders_vectors(client, tiny_bert):
    openai = pytest.importorskip("openai")
    oc = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=client, max_retries=0)
    name = tiny_bert.name
    res = oc.embeddings.create(model=name, input=["good movie", "the phone was bad"])  # base64 on the wire
    ref = load_encoder(tiny_bert).encode(["good movie", "the phone was bad"], "query")
    got = np.array([d.embedding for d in res.data], np.float32)
    assert got.shape == (2, 32) and np.allclose(got, ref, atol=1e-5)
    assert res.usage.prompt_tokens == 4 + 6 and res.model == name
    short = oc.embeddings.create(model=name, input="good movie", dimensions=8, encoding_format="float")
    v = np.array(short.data[0].embedding)
    assert v.shape == (8,) and np.isclose(np.linalg.norm(v), 1.0, atol=1e-5)
    assert np.allclose(v, ref[0, :8] / np.linalg.norm(ref[0, :8]), atol=1e-5)
    models = {m.id for m in oc.models.list().data}
    assert name in models


def test_raw_http_base64_passage_kind_and_errors(client, tiny_bert):
    r = client.post("/v1/embeddings", json={"input": "good movie", "encoding_format": "base64",
                                            "input_type": "passage"})
    assert r.status_code == 200, r.text
    v = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
    assert np.allclose(v, load_encoder(tiny_bert).encode(["good movie"], "passage")[0], atol=1e-5)
    for body, code in [({"input": []}, "empty_input"), ({"input": [1, 2, 3]}, "invalid_input"),
                       ({"input": ["ok", "  "]}, "empty_input"), ({"input": "x", "dimensions": 33},
                                                                   "invalid_dimensions")]:
        r = client.post("/v1/embeddings", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (body, r.text)
    r = client.post("/v1/embeddings", json={"input": "x", "model": "nope"})
    assert r.status_code == 404
    r = client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"})
    assert r.status_code == 400  # OpenAI answers a schema error with 400
    assert client.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer bad"}
                       ).status_code == 401
