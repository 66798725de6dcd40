"""`luban predict RUN --input big.parquet --backend ray`: batch prediction sharded over Ray actors, streamed (the
driver reads the file in chunks with luban's own readers, never whole), output rows in input order.

Each actor loads the run once and predicts chunks exactly as `luban predict` does (the task's `frame_inputs` +
`predict`, bad rows found per row), so the rows, ids, error rows and output formats are those of the local path:
one output row per input row, whichever backend."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from luban.errors import ConfigError


class _Scorer:
    def __init__(self, run: str, threads: int, kw: dict):
        import torch

        from luban.lifecycle.predict_file import local_runner
        from luban.predictor import load

        torch.set_num_threads(threads)  # the actor's share of the cores, not all of them
        self.run = local_runner(load(run), kw)

    def score(self, frame):
        return self.run(frame)


def _ordered(actors, frames, depth: int):
    """(frame, result) in input order, with at most `depth` chunks in flight (memory stays bounded)."""
    import ray

    pending: deque = deque()
    i = 0
    for frame in frames:
        pending.append((frame, actors[i % len(actors)].score.remote(frame)))
        i += 1
        if len(pending) >= depth:
            frame, ref = pending.popleft()
            yield frame, ray.get(ref)
    while pending:
        frame, ref = pending.popleft()
        yield frame, ray.get(ref)


def ray_predict(run: str | Path, input_path: str | Path, output: str | Path, workers: int = 2,
                batch_size: int = 512, address: str = "local", on_error: str = "error-row", id_column=None,
                keep_columns=None, keep_input: bool = False, **kw):
    """Predict `input_path` into `output` on `workers` Ray actors; returns the Summary (rows, error rows, ...)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs ray[data]: pip install 'luban[distributed]'") from None
    from luban.lifecycle.predict_file import Summary, check_on_error, predict_rows, write_predictions
    from luban.predictor import load

    check_on_error(on_error)
    predictor = load(run, device="cpu")  # the driver reads the config and the inputs; the actors predict
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    share = max(0.25, min(1.0, (cpus - 1) / workers)) if cpus > 1 else 0.5
    Scorer = ray.remote(num_cpus=share)(_Scorer)
    actors = [Scorer.remote(str(Path(run).resolve()), max(1, int(share)), kw) for _ in range(workers)]
    summary = Summary(str(input_path))
    try:
        chunks = predict_rows(predictor, input_path, on_error, id_column, keep_columns, keep_input,
                              chunk_rows=batch_size, summary=summary,
                              runner_map=lambda frames: _ordered(actors, frames, 2 * workers))
        write_predictions(chunks, output)
    finally:
        for a in actors:
            ray.kill(a)
    return summary
