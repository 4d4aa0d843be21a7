"""What a device can compute: dense bf16 peaks of GPU models from their datasheets, and on CPU a
matrix-multiply peak measured once per machine.

MFU divides the model FLOPs a device achieved per second by ``device_peak``. On a GPU the peak is the
datasheet's dense (no sparsity) bf16 tensor-core figure for the model the device reports; an unknown
model has no peak (MFU is not reported) unless ``train.peak_tflops`` gives one. On a CPU no datasheet
applies, so the peak is measured: the best of several timed square matrix products in the run's
compute dtype with torch's thread count, cached per (CPU model, threads, dtype, torch version) in
``$XDG_CACHE_HOME/tapa_scale/matmul_peak.json`` (``~/.cache`` by default) so every later run on the
machine divides by the same figure.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

# Dense bf16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name(); first match
# wins, so more specific names come first.
GPU_BF16_TFLOPS = (
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),      # SXM
    ("H800", 989.4),
    ("B200", 2250.0),
    ("B100", 1750.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
)


def gpu_peak(name: str) -> float | None:
    """Dense bf16 peak in FLOP/s of the GPU model ``name``, or None if the table does not know it."""
    for key, tflops in GPU_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 0.5) -> float:
    """Best FLOP/s of ``n x n`` products in ``dtype`` on the CPU over about ``seconds``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # first call: allocation, kernel selection
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best


def cpu_peak(dtype: torch.dtype, cache: Path | None = None, refresh: bool = False) -> float:
    """The machine's measured matmul peak in FLOP/s for ``dtype`` (measured on first use, then cached;
    ``refresh``: measured again and the cache updated, as a calibration does)."""
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tapa_scale" / "matmul_peak.json"
    key = f"{_cpu_name()}|threads={torch.get_num_threads()}|{str(dtype).removeprefix('torch.')}|torch {torch.__version__}"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known or refresh:
        known[key] = measure_matmul_peak(dtype)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1) + "\n")
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home: measured again next time
    return float(known[key])


def device_peak(device: torch.device, dtype: torch.dtype, override_tflops: float = 0.0) -> tuple[float | None, str]:
    """(peak FLOP/s or None, where it came from) for the run's device and compute dtype."""
    if override_tflops > 0:
        return override_tflops * 1e12, "train.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name)
        return peak, f"datasheet dense bf16, {name}" if peak else f"unknown GPU {name!r}"
    return cpu_peak(dtype), f"measured {str(dtype).removeprefix('torch.')} matmul, {_cpu_name()}"
