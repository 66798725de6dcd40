"""MLflow tracking for a run: the resolved config as params, every epoch's metrics, the final test metrics, and the
report and model folder as artifacts. Any MLflow URI works (sqlite:///mlruns.db, a server, a folder)."""

from __future__ import annotations

import logging
from pathlib import Path

from luban.config import RunConfig
from luban.errors import ConfigError


def _flatten(tree, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]  # MLflow caps parameter values
    return out


def _numeric(record: dict, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step")}


class MlflowTracker:
    def __init__(self, cfg: RunConfig):
        try:
            import mlflow
        except ImportError:
            raise ConfigError("tracking.mlflow needs mlflow: pip install 'luban[tracking]'") from None
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.mlflow = mlflow
        mlflow.set_tracking_uri(cfg.tracking.mlflow)
        mlflow.set_experiment(cfg.tracking.experiment or f"luban-{cfg.task}")
        self.run = mlflow.start_run(run_name=cfg.output.name)
        mlflow.log_params(_flatten(cfg.model_dump(mode="json", exclude={"search"})))

    def log_epoch(self, record: dict) -> None:
        self.mlflow.log_metrics(_numeric(record), step=int(record["epoch"]))

    def log_step(self, values: dict, step: int) -> None:
        """Step-level train loss and lr every trainer.log_every optimizer steps (as HF Trainer's logging_steps)."""
        self.mlflow.log_metrics({f"step_{k}": float(v) for k, v in values.items()}, step=int(step))

    def finish(self, run_dir: Path, metrics: dict, history: list[dict]) -> None:
        for split in ("validation", "test"):
            self.mlflow.log_metrics(_numeric(metrics.get(split) or {}, f"final_{split}_"))
        if metrics.get("baseline"):
            self.mlflow.log_metrics(_numeric(metrics["baseline"].get("test") or {}, "baseline_test_"))
        self.mlflow.log_metrics(_numeric(metrics["timings"], "timing_"))
        if history and not self.mlflow.get_run(self.run.info.run_id).data.metrics:
            for record in history:  # loops that do not call back per epoch (distributed, own loops)
                self.log_epoch(record)
        self.mlflow.log_artifact(str(run_dir / "report.html"))
        self.mlflow.log_artifact(str(run_dir / "metrics.json"))
        self.mlflow.log_artifacts(str(run_dir / "model"), artifact_path="model")
        self.mlflow.set_tag("luban.run_dir", str(run_dir.resolve()))
        self.close("FINISHED")

    def close(self, status: str) -> None:
        if self.mlflow.active_run() is not None:
            self.mlflow.end_run(status=status)
