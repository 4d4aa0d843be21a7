"""Which collective each rank is in: a record of the torch.distributed calls of this process, for hang
reports.

`CollectiveTrace.install()` wraps the collectives and point-to-point calls of `torch.distributed`
(looked up by attribute at call time, as megatron-core and this package call them) so that each
call records its name, group size, first tensor's shape and dtype and start time while it runs, and
becomes the last call when it returns. A blocking call that never returns is the one a rank is stuck
in. Some waits happen elsewhere: an asynchronous call (``async_op=True``) returns at once, and calls
inside torch's coalescing block (megatron's gradient buckets) complete when the block ends. So the
description also names where the training thread's Python stack is inside ``torch.distributed`` and
who called it (e.g. ``_coalescing_manager``, from megatron's ``start_grad_sync``). The cost is one
Python wrapper per call. On GPUs the NCCL flight recorder gives the same per collective, in C++
(`flight_recorder_env`).
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

OPS = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "reduce_scatter",
       "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "broadcast", "broadcast_object_list",
       "reduce", "gather", "scatter", "barrier", "send", "recv", "isend", "irecv", "batch_isend_irecv",
       "monitored_barrier")


def _first_tensor(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
            return value[0]
    return None


def _group_size(kwargs) -> int:
    group = kwargs.get("group")
    try:
        return dist.get_world_size(group) if group is not None else dist.get_world_size()
    except (RuntimeError, ValueError):
        return -1


class CollectiveTrace:
    def __init__(self):
        self.current: dict | None = None  # the call in progress on the training thread
        self.last: dict | None = None     # the latest call that returned
        self.calls = 0
        self.thread = threading.get_ident()  # the training thread: install() is called from it
        self._originals: dict = {}
        self._lock = threading.Lock()

    def install(self) -> "CollectiveTrace":
        for name in OPS:
            fn = getattr(dist, name, None)
            if fn is not None and name not in self._originals:
                self._originals[name] = fn
                setattr(dist, name, self._wrap(name, fn))
        return self

    def uninstall(self) -> None:
        for name, fn in self._originals.items():
            setattr(dist, name, fn)
        self._originals.clear()

    def _wrap(self, name, fn):
        @functools.wraps(fn)
        def traced(*args, **kwargs):
            t = _first_tensor(args, kwargs)
            call = {"op": name, "group_size": _group_size(kwargs), "start": time.monotonic(),
                    "shape": list(t.shape) if t is not None else None,
                    "dtype": str(t.dtype).removeprefix("torch.") if t is not None else None,
                    "async": bool(kwargs.get("async_op", False)) or name in ("isend", "irecv", "batch_isend_irecv")}
            with self._lock:
                self.current, self.calls = call, self.calls + 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    call["end"] = time.monotonic()
                    self.last, self.current = call, None
        return traced

    def describe(self) -> str:
        """Where this rank is, in one phrase: the torch.distributed call it waits in (and who made
        it), else none; then the collective call in progress or the last one."""
        with self._lock:
            current, last = self.current, self.last
        now = time.monotonic()
        where = _distributed_frame(sys._current_frames().get(self.thread))
        if current is not None:
            return f"{where}; inside {_phrase(current)} for {now - current['start']:.1f} s"
        if last is not None:
            return f"{where}; the last collective call, {_phrase(last)}, returned {now - last['end']:.1f} s ago"
        return f"{where}; no collective called yet"


def _distributed_frame(frame) -> str:
    """'in torch.distributed <fn>, called from <fn> (<file>:<line>)' for the innermost frame of the
    stack inside torch/distributed, or 'not in torch.distributed'."""
    inner = None
    while frame is not None:
        name = frame.f_code.co_filename
        inside = f"torch{os.sep}distributed{os.sep}" in name
        if inside and inner is None:
            inner = frame
        elif inner is not None and not inside and not name.endswith("contextlib.py"):
            path = Path(frame.f_code.co_filename)
            short = os.sep.join(path.parts[-4:])
            return (f"in torch.distributed {inner.f_code.co_name}, called from {frame.f_code.co_name} "
                    f"({short}:{frame.f_lineno})")
        frame = frame.f_back
    return f"in torch.distributed {inner.f_code.co_name}" if inner is not None else "not in torch.distributed"


def _phrase(call: dict) -> str:
    what = f"{call['op']} over {call['group_size']} ranks"
    if call["shape"] is not None:
        what += f" of a {call['dtype']} tensor {call['shape']}"
    return what + (" (asynchronous)" if call["async"] else "")


def flight_recorder_env(run_dir: str | Path) -> None:
    """NCCL flight-recorder settings for a CUDA run, unless already set: keep a trace of the last
    collectives of every process group, dump it to ``<run_dir>/nccl_trace/rank_<r>`` when a collective
    times out, and tear the job down on such an error rather than hang. Read when the process group
    is created, so call this first. The dumps are read with torch's flight-recorder analyzer
    (``python -m torch.distributed.flight_recorder.fr_trace <dir>``)."""
    trace_dir = Path(run_dir) / "nccl_trace"
    for key, value in (("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000"), ("TORCH_FR_BUFFER_SIZE", "2000"),
                       ("TORCH_NCCL_DUMP_ON_TIMEOUT", "1"), ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
                       ("TORCH_NCCL_DEBUG_INFO_TEMP_FILE", str(trace_dir / "rank_"))):
        os.environ.setdefault(key, value)
    trace_dir.mkdir(parents=True, exist_ok=True)
