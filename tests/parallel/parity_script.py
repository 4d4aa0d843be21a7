"""Rank script for test_parity.py: train a tiny model for a few steps in one or more parallel layouts
and compare every rank's losses, gradients and final weights with a single-process reference.

    parity_script.py OUT --reference [ENC ...]    # one process: writes OUT/reference_<tag>.*
    torchrun ... parity_script.py OUT tp2 pp2 ... # each layout in turn, in the same processes

A layout is a dash-joined list: tp2, pp2, cp2, vpp2, sp (sequence parallel), ring (cp_comm=ring),
plain (no packed documents: default positions), chunk (the loss computed 16 positions x batch at a
time, model/lm_head.py, against the reference's single piece), zero (megatron's distributed optimizer:
AdamW state sharded over the data x context ranks), dp2 (a name only: the data-parallel size is what
the world leaves), and a positional encoding (tapa when none is named: rope, pi, yarn, nope, alibi). The reference covers
TAPA with and without documents and each ENC given after --reference with documents.
Every layout starts from the reference's initial weights (cut into this rank's shards), reads the same
global batches (split over data-parallel ranks as the loader splits them) and runs the library's own
train_step / evaluate. Rank 0 writes OUT/<layout>.json with the losses, grad norms and the largest
relative differences (over all ranks) of gradients and weights; with `zero`, instead of per-step
gradients (the distributed optimizer clips each rank's shard in place: no rank holds them whole), each
rank's measured optimizer-state bytes beside those of torch's AdamW over the same parameters.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from tapa_scale.config import Config, validate
from tapa_scale.model import lm_head
from tapa_scale.ops import ENCODINGS
from tapa_scale.parallel import ParallelConfig, init_groups
from tapa_scale.parallel.parallelize import build_chunks, parallelize, unwrap
from tapa_scale.parallel.reshard import load_full_state_dict, local_tensors
from tapa_scale.train.setup import Run, build_optimizer_for, seed_everything

STEPS, MICRO, GLOBAL_MICRO, SEQ, VOCAB = 3, 2, 2, 32, 256  # 2 micro-batches of 2 sequences per step
DEFAULT_LOSS_CHUNK = lm_head.LOSS_CHUNK_TOKENS


def make_config(layout: dict, dp: int) -> Config:
    cfg = Config()
    m = cfg.model
    m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.ffn_hidden_size = 4, 64, 4, 2, 128
    m.vocab_size, m.attention_impl, m.pos_encoding = VOCAB, "reference", layout["enc"]
    m.rope.scale = 2.0 if layout["enc"] in ("pi", "yarn", "llama3") else 1.0  # scale 1: plain RoPE
    cfg.data.seq_len = SEQ
    t = cfg.train
    t.micro_batch_size, t.global_batch_size = GLOBAL_MICRO // dp, GLOBAL_MICRO * MICRO
    # eps=1e-3 keeps AdamW's update Lipschitz in the gradient (|du| <= |dg| / eps): with the paper's 1e-8,
    # m / sqrt(v) turns rounding-sized differences of near-zero gradients into O(lr) weight differences.
    t.lr, t.eps, t.grad_clip, t.document_masking = 1e-3, 1e-3, 1.0, layout["docs"]
    t.checkpoint_every, t.final_checkpoint = 0, False
    p = cfg.parallel
    p.tp, p.pp, p.cp, p.vpp = layout["tp"], layout["pp"], layout["cp"], layout["vpp"]
    p.sequence_parallel, p.cp_comm = layout["sp"], "ring" if layout["ring"] else "allgather"
    p.distributed_optimizer = layout["zero"]
    problems = validate(cfg, world_size=dp * p.tp * p.pp * p.cp, check_paths=False)
    assert not problems, problems
    return cfg


def parse(name: str) -> dict:
    layout = dict(tp=1, pp=1, cp=1, vpp=1, sp=False, ring=False, docs=True, enc="tapa", chunk=False, zero=False)
    for part in name.split("-"):
        if part in ENCODINGS:
            layout["enc"] = part
        elif part in ("sp", "ring", "chunk", "zero"):
            layout[part] = True
        elif part == "plain":
            layout["docs"] = False
        elif part[:-1] in ("tp", "pp", "cp", "vpp", "dp"):
            layout[part[:-1]] = int(part[-1])
        else:
            raise ValueError(f"unknown layout part {part!r} in {name!r}")
    return layout


def reference_tag(layout: dict) -> str:
    """Name of the single-process run a layout is compared with: docs / plain for TAPA, <enc>_docs."""
    tag = "docs" if layout["docs"] else "plain"
    return tag if layout["enc"] == "tapa" else f"{layout['enc']}_{tag}"


def global_batches(split: str, n: int):
    """n global micro-batches of GLOBAL_MICRO packed sequences, the same on every rank."""
    gen = torch.Generator().manual_seed(0 if split == "train" else 1)
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (GLOBAL_MICRO, SEQ + 1), generator=gen)
        seg = torch.zeros(GLOBAL_MICRO, SEQ, dtype=torch.int64)
        for row in seg:  # 2-3 documents per sequence, positions restarting at 0 in each
            for cut in torch.randint(1, SEQ, (2,), generator=gen).tolist():
                row[cut:] += 1
        start = torch.cat([torch.zeros(GLOBAL_MICRO, 1, dtype=torch.int64), (seg[:, 1:] != seg[:, :-1]).long()], 1)
        idx = torch.arange(SEQ).expand(GLOBAL_MICRO, SEQ)
        first = torch.cummax(torch.where(start.bool(), idx, torch.zeros_like(idx)), dim=1).values
        yield {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "segment_ids": seg, "position_ids": idx - first}


def dp_view(batches, dp_rank: int, dp_size: int):
    """The loader's rule: rank r of D takes samples r, r + D, ... of each global micro-batch."""
    for batch in batches:
        yield {k: v[dp_rank::dp_size] for k, v in batch.items()}


class Recorder:
    """Wraps the optimizer: keeps each step's (clipped) gradients, keyed by local parameter name."""

    def __init__(self, optimizer, names: dict):
        self.optimizer, self.names, self.grads = optimizer, names, []

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.grads.append({self.names[p]: p.grad.detach().clone() for p in self.names if p.grad is not None})
        return self.optimizer.step()


def state_bytes(optimizer) -> int:
    """Bytes of every tensor the torch optimizer(s) keep as state (inside megatron's wrappers: a
    ChainedOptimizer of DistributedOptimizers around torch AdamW), as allocated."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # the parity Recorder
    inner = [getattr(o, "optimizer", o) for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    return sum(v.numel() * v.element_size() for o in inner for st in o.state.values() for v in st.values()
               if torch.is_tensor(v) and v.dim() > 0)


def zero_memory(run, chunks) -> dict:
    """This rank's optimizer-state bytes under the distributed optimizer, those of torch's AdamW over
    the same parameters (built and stepped once on copies: measured, not computed) and 1/(dp x cp) of
    the padded gradient buffers in AdamW bytes (the largest shard a rank may own)."""
    from megatron.core import parallel_state as mpu
    from tapa_scale.train.optim import build_optimizer

    copies = [torch.nn.Parameter(p.detach().clone()) for c in chunks for p in c.parameters() if p.requires_grad]
    for c in copies:
        c.grad = torch.zeros_like(c)
    plain = build_optimizer(copies, run.cfg.train)
    plain.step()
    shards = mpu.get_data_parallel_world_size(with_context_parallel=True)
    padded = sum(b.grad_data.numel() for w in run.chunks for b in w.buffers)
    return {"rank": dist.get_rank(), "model_rank": [run.groups.tp_rank, run.groups.pp_rank], "shards": shards,
            "state_bytes": state_bytes(run.optimizer), "plain_bytes": state_bytes(plain),
            "shard_bound_bytes": 8 * padded // shards}


def steps_for(cfg: Config) -> int:
    """TAPA runs STEPS steps (optimizer state and schedules across steps); a baseline encoding one: its
    losses, every gradient and the weights after the update already show an encoding that is wrong
    under a layout, at a third of the time."""
    return STEPS if cfg.model.pos_encoding == "tapa" else 1


def run_layout(cfg: Config, groups, full_init: dict | None):
    seed_everything(0)
    chunks = build_chunks(cfg.model, cfg.parallel, groups, vocab_size=VOCAB, seq_len=SEQ)
    if full_init is not None:
        for chunk in chunks:
            load_full_state_dict(chunk, full_init)
    wrapped = parallelize(chunks, groups, cfg.parallel)
    names = {p: (i, n) for i, c in enumerate(chunks) for n, p in c.named_parameters()}
    optimizer = Recorder(build_optimizer_for(cfg, wrapped), names)
    run = Run(cfg=cfg, groups=groups, device=groups.device, dtype=torch.float32, model=chunks[0], chunks=wrapped,
              optimizer=optimizer, train_loader=None, accumulation=MICRO, global_batch=GLOBAL_MICRO * MICRO,
              val_loader=lambda: dp_view(global_batches("val", 2), groups.dp_rank, groups.dp_size),
              document_masking=cfg.train.document_masking, tokenizer_dir=None)
    from tapa_scale.train.step import evaluate, train_step
    batches = dp_view(global_batches("train", STEPS * MICRO), groups.dp_rank, groups.dp_size)
    losses, norms = zip(*(train_step(run, batches) for _ in range(steps_for(cfg))))
    val, val_by_position = evaluate(run, 2)
    stats = {"losses": list(losses), "norms": list(norms), "val": val, "val_by_position": val_by_position}
    if cfg.parallel.distributed_optimizer:
        stats["zero"] = zero_memory(run, chunks)
    return chunks, optimizer.grads, stats


def reference(out: Path, encodings: list[str]) -> None:
    from safetensors.torch import save_file
    groups = init_groups(ParallelConfig(), "cpu")
    for name in ["tp1", "plain"] + encodings:
        layout = parse(name)
        cfg = make_config(layout, 1)
        seed_everything(0)
        init = {n: p.detach().clone() for n, p in
                build_chunks(cfg.model, cfg.parallel, groups, vocab_size=VOCAB, seq_len=SEQ)[0].state_dict().items()
                if p is not None}
        chunks, grads, stats = run_layout(cfg, groups, init)
        tensors = {f"init/{n}": t for n, t in init.items()}
        tensors.update({f"grad{s}/{n}": g for s, step in enumerate(grads) for (_, n), g in step.items()})
        tensors.update({f"final/{n}": p.detach() for n, p in chunks[0].named_parameters()})
        tag = reference_tag(layout)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"reference_{tag}.safetensors"))
        (out / f"reference_{tag}.json").write_text(json.dumps(stats))


def worst(mine: dict, full: dict, chunks) -> float:
    """Largest |mine - ref| / max|ref| over this rank's tensors, ref cut from the full tensors."""
    err = 0.0
    for i, chunk in enumerate(chunks):
        ref = local_tensors(full, unwrap(chunk))
        for name, value in ref.items():
            if (i, name) in mine:
                scale = value.abs().max().clamp_min(1e-12)
                err = max(err, float((mine[(i, name)] - value).abs().max() / scale))
    return err


def parallel(out: Path, names: list[str]) -> None:
    from megatron.core import parallel_state as mpu
    from safetensors.torch import load_file
    world = int(os.environ["WORLD_SIZE"])
    for name in names:
        layout = parse(name)
        cfg = make_config(layout, world // (layout["tp"] * layout["pp"] * layout["cp"]))
        ref = load_file(str(out / f"reference_{reference_tag(layout)}.safetensors"))
        part = lambda prefix: {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}  # noqa: E731
        try:
            groups = init_groups(cfg.parallel, "cpu")
            lm_head.LOSS_CHUNK_TOKENS = 16 if layout["chunk"] else DEFAULT_LOSS_CHUNK
            chunks, grads, stats = run_layout(cfg, groups, part("init/"))
            errs = [worst(g, part(f"grad{s}/"), chunks) for s, g in enumerate(grads)]
            final = {(i, n): p.detach() for i, c in enumerate(chunks) for n, p in c.named_parameters()}
            errs.append(worst(final, part("final/"), chunks))
            errs = torch.tensor(errs, dtype=torch.float64)
            dist.all_reduce(errs, op=dist.ReduceOp.MAX)
            stats.update(grad_errors=errs[:-1].tolist(), param_error=float(errs[-1]))
            if cfg.parallel.distributed_optimizer:  # no rank holds the clipped gradients whole
                del stats["grad_errors"]
            if "zero" in stats:  # every rank's measurement, in rank order
                every = [None] * dist.get_world_size()
                dist.all_gather_object(every, stats["zero"])
                stats["zero"] = every
        except Exception:
            stats = {"error": traceback.format_exc()}
            (out / f"{name}.rank{dist.get_rank()}.json").write_text(json.dumps(stats))
            sys.stdout.flush()
            os._exit(1)  # the other ranks may wait in a collective: end the launch now
        if dist.get_rank() == 0:
            (out / f"{name}.json").write_text(json.dumps(stats))
        mpu.destroy_model_parallel()


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    if argv[1:2] == ["--reference"]:
        reference(out, argv[2:])
    else:
        parallel(out, argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
