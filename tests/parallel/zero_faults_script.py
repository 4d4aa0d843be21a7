"""Rank script for test_zero.py: a non-finite gradient on one rank skips the step on every rank, with
the weights and the optimizer state (moments and step counts) left bit-identical, for megatron's
distributed optimizer and for torch's AdamW (both reading megatron DDP's gradient buffers).

    torchrun --nproc_per_node 2 zero_faults_script.py OUT

Per optimizer: step 1 trains normally; in step 2 rank 1's decoder output is NaN (the fault injection
of train.fault_nan_at), so its loss and gradients are NaN; step 3 trains again. Rank 0 writes
OUT/faults.json: for each optimizer and rank, whether step 2 was skipped, whether the gradient buffer
the optimizer reads held a non-finite value, whether weights and state equal their copies from before
step 2, the losses and norms of the three steps, and whether step 3 moved the weights.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from parity_script import GLOBAL_MICRO, MICRO, STEPS, dp_view, global_batches, make_config, parse
from tapa_scale.parallel import init_groups
from tapa_scale.parallel.parallelize import build_chunks, parallelize, unwrap
from tapa_scale.train import faults
from tapa_scale.train.setup import Run, build_optimizer_for, seed_everything
from tapa_scale.train.step import train_step


def optimizer_state(optimizer) -> list[torch.Tensor]:
    """Copies of every state tensor of the torch optimizer(s), inside megatron's wrappers or not."""
    inner = [getattr(o, "optimizer", o) for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    return [v.detach().clone() for o in inner for st in o.state.values() for v in st.values() if torch.is_tensor(v)]


def weights(chunks) -> list[torch.Tensor]:
    return [p.detach().clone() for c in chunks for p in c.parameters()]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def run_one(layout: str) -> dict:
    cfg = make_config(parse(layout), 2)
    groups = init_groups(cfg.parallel, "cpu")
    seed_everything(0)
    chunks = build_chunks(cfg.model, cfg.parallel, groups, vocab_size=256, seq_len=cfg.data.seq_len)
    wrapped = parallelize(chunks, groups, cfg.parallel)
    run = Run(cfg=cfg, groups=groups, device=groups.device, dtype=torch.float32, model=chunks[0], chunks=wrapped,
              optimizer=build_optimizer_for(cfg, wrapped), train_loader=None, val_loader=None,
              accumulation=MICRO, global_batch=GLOBAL_MICRO * MICRO, document_masking=True, tokenizer_dir=None)
    guard = faults.NonFiniteGuard(run.optimizer, run.device, run.chunks)
    poison = {"on": False}
    if groups.rank == 1:
        faults.poison_at([unwrap(c) for c in wrapped], lambda: poison["on"])
    seen = {}
    step = guard.step

    def observe():  # what the optimizer would read, seen just before the guard decides
        seen["finite"] = faults.all_finite(faults.grad_buffers(run.chunks))
        return step()
    run.optimizer.step = observe
    batches = dp_view(global_batches("train", STEPS * MICRO), groups.dp_rank, groups.dp_size)
    out = {"steps": [list(train_step(run, batches))]}
    w, st = weights(chunks), optimizer_state(run.optimizer)
    poison["on"] = True
    out["steps"].append(list(train_step(run, batches)))
    poison["on"] = False
    out.update(skipped=guard.skipped_last, grads_finite=seen["finite"], weights_kept=same(w, weights(chunks)),
               state_kept=same(st, optimizer_state(run.optimizer)), state_tensors=len(st))
    out["steps"].append(list(train_step(run, batches)))
    out.update(third_skipped=guard.skipped_last, third_moved=not same(w, weights(chunks)))
    from megatron.core import parallel_state as mpu
    mpu.destroy_model_parallel()
    return out


def main(out: Path) -> int:
    results = {}
    for layout in ("dp2-zero", "dp2"):
        mine = run_one(layout)
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        results[layout] = every
    if dist.get_rank() == 0:
        (out / "faults.json").write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
