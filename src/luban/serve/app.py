"""A FastAPI app for one run directory: REST prediction, run info, and a minimal web playground.

    luban serve runs/NAME --port 8000
    curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"inputs": ["服务很好"]}'

The app never branches on the task: it hands inputs to the run's predictor and returns its JSON-ready output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class PredictRequest(BaseModel):
    inputs: list[Any]


PLAYGROUND = """<!doctype html><html lang=en><head><meta charset=utf-8><title>luban — {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:760px}}textarea{{width:100%;height:8rem}}
pre{{background:#f3f5f8;padding:1rem;white-space:pre-wrap}}</style></head><body>
<h1>luban playground: <code>{name}</code></h1><p>task <b>{task}</b>. {hint}</p>
<textarea id=inp>{example}</textarea><p><button id=go>Predict</button></p><pre id=out></pre>
<script>
document.getElementById('go').onclick = async () => {{
  const raw = document.getElementById('inp').value;
  let inputs;
  try {{ inputs = {parse}; }} catch (e) {{ document.getElementById('out').textContent = 'bad input: ' + e; return; }}
  const r = await fetch('predict', {{method: 'POST', headers: {{'content-type': 'application/json'}},
                                     body: JSON.stringify({{inputs}})}});
  document.getElementById('out').textContent = JSON.stringify(await r.json(), null, 2);
}};
</script></body></html>"""


def create_app(run_dir: str | Path):
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    from luban.errors import LubanError
    from luban.predictor import load

    predictor = load(run_dir)
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    app = FastAPI(title=f"luban: {run_dir.name}", version="0.1.0")

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/info")
    def info():
        return {"run": run_dir.name, "task": predictor.task, "model": predictor.config.model.type,
                "labels": metrics.get("data", {}).get("labels"),
                "test_metrics": {k: v for k, v in metrics["test"].items() if isinstance(v, (int, float))}}

    @app.post("/predict")
    def predict(req: PredictRequest):
        try:
            return {"predictions": predictor.predict(req.inputs)}
        except LubanError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None

    @app.get("/", response_class=HTMLResponse)
    def playground():
        text = predictor.task == "text_classification"
        return PLAYGROUND.format(
            name=run_dir.name, task=predictor.task,
            hint="One text per line." if text else "A JSON list of rows (column: value).",
            example="房间很干净，服务也很周到\n质量太差了，非常失望" if text else "[{}]",
            parse="raw.split('\\n').filter(s => s.trim())" if text else "JSON.parse(raw)")

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    try:
        import uvicorn
    except ImportError:
        from luban.errors import LubanError

        raise LubanError("serving needs fastapi and uvicorn: pip install 'luban[serve]'") from None
    app = create_app(run_dir)
    print(f"serving {run_dir} on http://{host}:{port}  (playground: /, API: POST /predict, docs: /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
