"""Training: config sections, optimizer and schedule, checkpoints, metrics and the loop."""
from .config import RunConfig, TrainConfig

__all__ = ["RunConfig", "TrainConfig"]
