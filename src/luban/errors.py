"""User-facing errors. The CLI prints their message alone, never a traceback."""


class LubanError(Exception):
    """An error the user can fix: bad config, bad data, missing file."""


class ConfigError(LubanError):
    """The YAML config (or a --set override) is invalid."""


class DataError(LubanError):
    """An input file or row is unusable; the message names the file, row and field."""


class RunError(LubanError):
    """A run directory is missing, incomplete or corrupted."""


def skippable(e: DataError) -> DataError:
    """An unreadable image/audio file's error, naming the setting that skips such files instead."""
    return DataError(f"{e}; to skip unreadable files (counted, with a warning) set data.skip_bad_files: true")


class ExportError(LubanError):
    """A model cannot be exported or compressed the way that was asked (task, model type or format)."""


class TrainingDiverged(LubanError, FloatingPointError):
    """The loss became NaN/inf during training (a FloatingPointError too, so trial runners can catch it as one)."""

    def __init__(self, where: str):
        super().__init__(f"training diverged: {where}. Lower trainer.lr (e.g. by 10x), set trainer.grad_clip "
                         "(e.g. 1.0), or train in full precision (trainer.precision: fp32); if it happens at the "
                         "first batch, check the data for extreme values")
