"""Fault handling for the training loop: non-finite steps, preemption signals, a stalled-step watchdog,
and the explicit fault injections the tests use.

- `NonFiniteGuard` wraps the optimizer's `step`: when any gradient of any rank is NaN/inf, the step is
  skipped on every rank (one all-reduced flag, so ranks never diverge) and the optimizer state and the
  weights are left untouched. The gradients are read where megatron's DDP keeps them, its contiguous
  fp32 buffers (`param.main_grad` are views of them), for torch's AdamW and the distributed optimizer
  alike: the latter never fills `param.grad` and, without a loss scaler, would step on a NaN. The
  loop then applies train.on_nonfinite.
- `Preemption` turns SIGTERM / SIGUSR1 (slurm's --signal, torchrun forwarding a stop) into a flag the
  loop polls once per step; the flag is all-reduced so that every rank saves after the same step.
- `Watchdog` is a daemon thread: when no step finishes within train.watchdog_s it prints one line with
  rank, step and the collective the rank is in (or last left: parallel/trace.py), then every thread's
  Python stack (faulthandler), once per stall. After train.hang_timeout_s it reports the same way
  and ends the process, so the launcher ends the job instead of letting it hang.
- Fault injections (train.fault_*) are config keys so a test names them on the command line; they are
  documented in docs/checkpoints.md and are off by default.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import sys
import tempfile
import threading
import time

import torch
import torch.distributed as dist


def _all_reduce_max(value: float, device) -> float:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor([value], dtype=torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


class NonFiniteGuard:
    """Replaces `optimizer.step` with one that skips the update when a gradient is not finite.

    `chunks` are the DDP-wrapped model chunks whose gradient buffers the optimizer reads. A skipped
    step returns what the wrapped optimizer returns when it skips one itself: megatron's optimizers
    `(False, None, None)` (updated, grad norm, zeros in grads), torch's None."""

    def __init__(self, optimizer, device, chunks):
        self.optimizer, self.device = optimizer, device
        self.buffers = grad_buffers(chunks)
        self.skipped_last = False
        self._step = optimizer.step
        self._skipped = (False, None, None) if _is_megatron(optimizer) else None
        optimizer.step = self.step  # train/step.py calls run.optimizer.step()

    def step(self, *args, **kwargs):
        local = 0.0 if all_finite(self.buffers) else 1.0
        self.skipped_last = _all_reduce_max(local, self.device) > 0
        if self.skipped_last:
            return self._skipped
        return self._step(*args, **kwargs)


def grad_buffers(chunks) -> list:
    """The gradient storage of megatron DDP chunks: one flat fp32 tensor per buffer. After the step's
    reduction it holds what the optimizer reads: the averaged gradient (all-reduce), or with the
    distributed optimizer this rank's reduced shard beside its own contributions to the other shards
    (reduce-scatter; a non-finite contribution there makes the owner's shard non-finite too)."""
    out = []
    for chunk in chunks:
        buffers = [*getattr(chunk, "buffers", []), *getattr(chunk, "expert_parallel_buffers", [])]
        if not buffers:
            raise TypeError(f"{type(chunk).__name__} has no DDP gradient buffers (wrap it with parallelize())")
        out += [b.grad_data for b in buffers]
    return out


def all_finite(tensors) -> bool:
    """True when no element of any tensor is NaN or inf (one fused sum: NaN or inf anywhere makes it so)."""
    if not tensors:
        return True
    return bool(torch.isfinite(torch.stack([t.float().sum() for t in tensors]).sum()))


def _is_megatron(optimizer) -> bool:
    from megatron.core.optimizer import MegatronOptimizer
    return isinstance(optimizer, MegatronOptimizer)


class Preemption:
    """SIGTERM / SIGUSR1 -> `requested()` becomes true on every rank after the current step."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, enabled: bool, device):
        self.device, self.flag, self.signum = device, False, None
        self._previous = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.flag, self.signum = True, signum

    def requested(self) -> bool:
        return _all_reduce_max(1.0 if self.flag else 0.0, self.device) > 0

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Watchdog:
    """Reports a step that runs longer than `timeout_s` (rank, step, the collective it is in or last
    left, all Python stacks), once per stall; with `hang_s`, a step still running after that many
    seconds is a hang: reported the same way, then the process exits with HANG_EXIT after a grace
    of a few seconds (time for the other ranks' reports), so the launcher ends the job instead of
    letting it wait forever. `trace`: a parallel.trace.CollectiveTrace."""

    def __init__(self, timeout_s: float, rank: int, hang_s: float = 0.0, trace=None):
        self.timeout_s, self.hang_s, self.rank, self.trace = timeout_s, hang_s, rank, trace
        self.step, self.last = 0, time.monotonic()
        self._reported, self._stop = False, threading.Event()
        self._thread = None
        limits = [x for x in (timeout_s, hang_s) if x > 0]
        if limits:
            self._poll = min(1.0, min(limits) / 4)
            self._thread = threading.Thread(target=self._watch, name="tapa-watchdog", daemon=True)
            self._thread.start()

    def beat(self, step: int) -> None:
        """The loop finished `step`; the next one starts now."""
        self.step, self.last, self._reported = step, time.monotonic(), False

    def _where(self) -> str:
        return f"; {self.trace.describe()}" if self.trace is not None else ""

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            waited = time.monotonic() - self.last
            if self.timeout_s and waited > self.timeout_s and not self._reported:
                self._reported = True
                _report(f"watchdog: rank {self.rank} stalled in step {self.step + 1} for {waited:.0f} s "
                        f"(train.watchdog_s={self.timeout_s:g}){self._where()}; Python stacks of all threads follow")
            if self.hang_s and waited > self.hang_s:
                _report(f"hang: rank {self.rank} stuck in step {self.step + 1} for {waited:.0f} s "
                        f"(train.hang_timeout_s={self.hang_s:g}){self._where()}; ending the job with exit "
                        f"status {HANG_EXIT}; Python stacks of all threads follow")
                time.sleep(HANG_GRACE_S)
                os._exit(HANG_EXIT)

    def close(self) -> None:
        self._stop.set()


HANG_EXIT = 124      # like timeout(1)
HANG_GRACE_S = 5.0   # between a rank's hang report and its exit, so that every rank reports


def _report(line: str) -> None:
    """The line, then every thread's stack, each in one write: the ranks of a job share the launcher's
    stderr, and faulthandler writes a stack in many small pieces, where another rank's report could
    otherwise land in the middle of a line."""
    with tempfile.TemporaryFile() as f:
        faulthandler.dump_traceback(file=f, all_threads=True)
        f.seek(0)
        stacks = f.read()
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), (line + "\n").encode())
    os.write(sys.stderr.fileno(), stacks)


# ---------------------------------------------------------------- fault injection (tests)

def poison_at(chunks: list, step_of) -> list:
    """Forward hooks that turn the decoder's output into NaN while `step_of()` is the poisoned step
    (train.fault_nan_at): the loss and every gradient become NaN, as after an overflow."""
    handles = []
    for chunk in chunks:
        decoder = getattr(chunk, "decoder", None)
        if decoder is not None:
            handles.append(decoder.register_forward_hook(
                lambda module, args, out: out * float("nan") if step_of() else out))
    return handles


def stall(seconds: float, rank: int, only_rank: int) -> None:
    """train.fault_stall_at: a step that hangs on every rank, or on ``only_rank`` alone (>= 0: a rank
    that stops taking part, so the others wait for it in their next collective)."""
    if only_rank < 0 or rank == only_rank:
        time.sleep(seconds)


def kill_hook(stage: str):
    """train.fault_kill_in_save: SIGKILL this process when a save reaches `stage` (no cleanup runs)."""
    def hook(reached: str) -> None:
        if reached == stage:
            print(f"fault injection: killing rank during checkpoint save at {stage}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def crash(step: int, rank: int) -> None:
    """train.fault_crash_at: rank 0 dies after `step` (a synchronous checkpoint of that step is
    published; an asynchronous one is still in flight and is lost), as a process that crashes would;
    only on a first attempt, so that a torchrun restart gets past it."""
    if rank == 0 and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        print(f"fault injection: rank 0 crashing after step {step}", file=sys.stderr, flush=True)
        os._exit(1)
