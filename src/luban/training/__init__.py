"""The training engine: loop, optimizers, schedules, precision, checkpoints."""
