"""What every command that trains or re-measures a run shares: seeding (luban.pipeline, the Ray workers in
luban.training.distributed, luban.compress)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
