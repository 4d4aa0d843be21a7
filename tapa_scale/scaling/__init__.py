"""Arithmetic over configs: model FLOPs per token and device peaks, for throughput accounting.

Nothing here builds a model or touches the trainer; `flops` counts, `peaks` says what a device can do.
"""
from .flops import FlopCount, model_flops
from .peaks import device_peak

__all__ = ["FlopCount", "model_flops", "device_peak"]
