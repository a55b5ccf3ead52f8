"""What a training run reports: TensorBoard scalars and summary.json (rank 0 only)."""
from __future__ import annotations

import math
from pathlib import Path

from ..storage import write_json
from .checkpoint import plain
from .distributed import Dist


class Logger:
    """TensorBoard scalars under `folder`; a resumed run drops events past its checkpoint."""

    def __init__(self, folder: Path, d: Dist, step: int = 0):
        self.w = None
        if d.main:
            from torch.utils.tensorboard import SummaryWriter
            self.w = SummaryWriter(str(folder), purge_step=step if step else None)

    def scalars(self, values: dict, step: int, prefix: str = '') -> None:
        if self.w is not None:
            for k, v in values.items():
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    self.w.add_scalar(prefix + k, v, step)

    def close(self):
        if self.w is not None:
            self.w.close()


def write_summary(path: Path, summary: dict) -> None:
    write_json(path, plain(summary))
