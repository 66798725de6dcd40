"""`luban predict RUN --input big.parquet --backend ray`: batch prediction sharded over Ray Data workers, streamed
(the file is read in blocks, never whole in the driver), output rows in input order, with a progress bar.

Each worker loads the run once and predicts batches through the run's own `read_inputs` + `predict`, so
preprocessing is exactly that of `luban predict`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from luban.data.readers import detect_format
from luban.errors import ConfigError


class _Scorer:
    def __init__(self, run: str, threads: int):
        import torch

        from luban.predictor import load

        torch.set_num_threads(threads)  # the actor's share of the cores, not all of them
        self.predictor = load(run)

    def __call__(self, batch):
        import pandas as pd

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "batch.jsonl"
            batch.to_json(path, orient="records", lines=True, force_ascii=False)
            rows = self.predictor.predict_file(path)
        return pd.DataFrame({"prediction": [json.dumps(r, ensure_ascii=False) for r in rows]})


def _read(path: Path):
    import ray.data

    fmt = detect_format(path)
    if fmt == "parquet":
        return ray.data.read_parquet(str(path))
    if fmt == "jsonl":
        return ray.data.read_json(str(path), lines=True)
    import pyarrow.csv as pacsv

    delimiter = "\t" if fmt == "tsv" else ","
    return ray.data.read_csv(str(path), parse_options=pacsv.ParseOptions(delimiter=delimiter),
                             convert_options=pacsv.ConvertOptions(strings_can_be_null=True))


def ray_predict(run: str | Path, input_path: str | Path, output: str | Path, workers: int = 2,
                batch_size: int = 512, address: str = "local") -> int:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("--backend ray needs ray[data]: pip install 'luban[distributed]'") from None
    from rich.progress import Progress

    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ds = _read(Path(input_path))
    total = ds.count()
    # the workers must leave a CPU to the tasks that read the file, or on a small machine they wait on each other
    cpus = float(ray.cluster_resources().get("CPU", 1))
    share = max(0.25, min(1.0, (cpus - 1) / workers)) if cpus > 1 else 0.5
    scored = ds.map_batches(_Scorer, fn_constructor_args=(str(Path(run).resolve()), max(1, int(share))),
                            batch_format="pandas", batch_size=batch_size, concurrency=workers, num_cpus=share)
    written = 0
    with open(output, "w", encoding="utf-8") as f, Progress(transient=True) as bar:
        task = bar.add_task("predict", total=total)
        for batch in scored.iter_batches(batch_format="pandas", batch_size=batch_size):
            for line in batch["prediction"]:
                f.write(line + "\n")
            written += len(batch)
            bar.update(task, advance=len(batch))
    return written
