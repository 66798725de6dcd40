"""`luban predict RUN --input big.parquet --backend ray`: batch prediction sharded over Ray actors, streamed (the
driver reads the file in chunks with luban's own readers, never whole), output rows in input order.

Each actor loads the run once and predicts chunks exactly as `luban predict` does (the task's `frame_inputs` +
`predict`, bad rows found per row), so the rows, ids, error rows and output formats are those of the local path:
one output row per input row, whichever backend."""

from __future__ import annotations

from pathlib import Path


def _runner(run: str, kw: dict):
    """An actor's worker (luban.lifecycle.ray_pool): the run loaded once, predicting frames as `luban predict`."""
    from luban.lifecycle.predict_file import local_runner
    from luban.predictor import load

    return local_runner(load(run), kw)


def ray_predict(run: str | Path, input_path: str | Path, output: str | Path, workers: int = 2,
                batch_size: int = 512, address: str = "local", on_error: str = "error-row", id_column=None,
                keep_columns=None, keep_input: bool = False, **kw):
    """Predict `input_path` into `output` on `workers` Ray actors; returns the Summary (rows, error rows, ...)."""
    from luban.lifecycle.predict_file import Summary, check_on_error, predict_rows, write_predictions
    from luban.lifecycle.ray_pool import actor_pool, check_workers, ordered, require_ray
    from luban.predictor import load

    check_workers(workers)
    require_ray()
    check_on_error(on_error)
    predictor = load(run, device="cpu")  # the driver reads the config and the inputs; the actors predict
    summary = Summary(str(input_path))
    with actor_pool(_runner, (str(Path(run).resolve()), kw), workers, address) as actors:
        chunks = predict_rows(predictor, input_path, on_error, id_column, keep_columns, keep_input,
                              chunk_rows=batch_size, summary=summary,
                              runner_map=lambda frames: ordered(actors, frames, 2 * workers))
        write_predictions(chunks, output)
    return summary
