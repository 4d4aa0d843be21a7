"""What a run reports: metrics.jsonl (one JSON object per logged step), TensorBoard scalars, and a
progress line with loss, tokens/s and MFU on the console (a rich progress bar on a terminal)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class MetricsLogger:
    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int, enabled: bool,
                 tensorboard: bool, progress: bool):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.console = Console(stderr=True)
        self.writer = self.progress = None
        if not enabled:
            return
        _drop_records_after(self.path, start_step)  # a resumed run rewrites what came after its checkpoint
        self.file = self.path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if progress and sys.stderr.isatty():
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                     console=self.console)
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, status="")
            self.progress.start()

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record["step"]
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
                elif key == "val_loss_by_position":  # one curve per position bucket, first bucket 00
                    for i, v in enumerate(value):
                        self.writer.add_scalar(f"{key}/{i:02d}", v, step)
        status = f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s"
        if "mfu" in record:
            status += f"  MFU {100 * record['mfu']:.1f}%"
        if "val_loss" in record:
            status += f"  val {record['val_loss']:.4f}"
        if self.progress is not None:
            self.progress.update(self.task, completed=step, status=status)
        else:
            self.console.print(f"step {step}  {status}  lr {record['lr']:.2e}", highlight=False)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
        self.file.close()


def _drop_records_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def position_buckets(length: int, buckets: int = 16) -> list[tuple[int, int]]:
    """Positions [0, length) in `buckets` contiguous ranges [start, end) of near-equal size (fewer when
    length is smaller): how loss by position is reported, in training logs and in evaluation."""
    n = max(1, min(buckets, length))
    edges = [round(i * length / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def loss_by_position(loss, buckets: list[tuple[int, int]]) -> list[tuple[float, int]]:
    """(sum, count) of per-token losses (b, s) in each position bucket, as Python floats (float64 sums)."""
    loss = loss.detach().double()
    return [(loss[:, a:b].sum().item(), loss[:, a:b].numel()) for a, b in buckets]
