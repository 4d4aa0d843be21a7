"""One optimizer step and the validation loss, for every parallel layout through one path: megatron's
pipeline schedule (`get_forward_backward_func`: no pipelining, 1F1B, or interleaved 1F1B).

Each micro-batch is drawn once per data-parallel rank; a context-parallel rank keeps its load-balanced
shard of the sequence (tokens, labels, positions, document ids). The loss is the mean over every token
of the global batch: megatron divides each micro-batch loss by the number of micro-batches and DDP
averages gradients over the data x context parallel ranks; the value reported is reduced the same way.
"""
from __future__ import annotations

import contextlib
import itertools
from functools import partial

import torch
import torch.distributed as dist

from ..model import TokenLayout
from ..parallel.context_parallel import shard_sequence
from ..parallel.parallelize import clip_grads, grad_norm, trainable_params
from .metrics import position_buckets


def prepare_batch(run, batch: dict) -> dict:
    """A loader micro-batch (B, L) -> this rank's model inputs: (B, L / cp) on the device."""
    g = run.groups

    def local(key):
        whole = batch[key] if key != "window_positions" else \
            torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
        return shard_sequence(whole, g.cp, g.cp_rank).to(run.device)
    layout = None
    if run.document_masking:  # attend within each packed document, positions restarting at 0
        layout = TokenLayout(positions=local("position_ids"), segment_ids=local("segment_ids"))
    return {"input_ids": local("input_ids"), "labels": local("labels"), "layout": layout,
            "positions": local("position_ids") if run.document_masking else local("window_positions")}


def _loss(per_token: torch.Tensor, cp: int, means: list, positions=None, by_position=None):
    """Loss function for the last pipeline stage. per_token [b, s_local] -> (loss, report).

    megatron multiplies this loss by the context-parallel size and divides it by the number of
    micro-batches; DDP then averages over data x context parallel ranks. Returning this shard's mean
    divided by cp makes the gradient that of the mean over all tokens (every shard has as many tokens).
    by_position (validation): float64 [2, buckets] sums and counts of the losses by the position each
    token had (its position id), added to in place; `positions` maps a position to its bucket."""
    mean = per_token.float().mean()
    means.append(mean.detach().clone())
    if by_position is not None:
        bucket = positions.reshape(-1)
        by_position[0].index_add_(0, bucket, per_token.detach().double().reshape(-1))
        by_position[1].index_add_(0, bucket, torch.ones_like(bucket, dtype=torch.float64))
    return mean / cp, {}


def _forward_step(run, means: list, by_position=None, bucket_of=None):
    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        with run.autocast():
            out = model(batch["input_ids"], None, None, labels=batch["labels"], packed_seq_params=batch["layout"])
        buckets = bucket_of[batch["positions"]] if by_position is not None else None
        return out, partial(_loss, cp=run.groups.cp, means=means, positions=buckets, by_position=by_position)
    return forward_step


def _untimed(part: str):
    return contextlib.nullcontext()


def _run_schedule(run, microbatches: list, forward_only: bool, phase=None, by_position=None,
                  bucket_of=None) -> float:
    """Forward (and backward) over the micro-batches; returns the mean loss over every rank's tokens.
    ``phase(part)``: a context timing a part of the step (accounting.StepClock.phase)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    phase = phase or _untimed
    means: list = []
    with phase("forward_backward"):
        get_forward_backward_func()(
            forward_step_func=_forward_step(run, means, by_position, bucket_of),
            data_iterator=[iter(microbatches) for _ in run.chunks],
            model=run.chunks, num_microbatches=len(microbatches), seq_length=run.cfg.data.seq_len,
            micro_batch_size=run.cfg.train.micro_batch_size, forward_only=forward_only)
    with phase("grad_sync"):
        return _global_mean(run, means)


def _global_mean(run, means: list) -> float:
    """Average the last stage's micro-batch means over all ranks (each mean covers as many tokens).

    Summed over the whole world: pipeline stages without the loss add nothing, and tensor-parallel
    copies of the same loss scale the numerator and the count alike."""
    total = torch.tensor([sum(m.item() for m in means), len(means)], dtype=torch.float64, device=run.device)
    if run.groups.world_size > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


def train_step(run, batches, clock=None) -> tuple[float, float]:
    """One optimizer step over `run.accumulation` micro-batches; returns (loss, grad norm).
    ``clock``: an accounting.StepClock that times the step's parts."""
    phase = clock.phase if clock is not None else _untimed
    with phase("data"):
        microbatches = [prepare_batch(run, next(batches)) for _ in range(run.accumulation)]
    with phase("optimizer"):
        for chunk in run.chunks:
            chunk.zero_grad_buffer()
        run.optimizer.zero_grad(set_to_none=True)
    loss = _run_schedule(run, microbatches, forward_only=False, phase=phase)
    with phase("optimizer"):
        return loss, _update(run)


def _update(run) -> float:
    """Clip and apply the reduced gradients; returns the global gradient norm (NaN: step skipped)."""
    if run.cfg.parallel.distributed_optimizer:
        # megatron's optimizer takes this rank's shard of the reduced gradients (main_grad), clips them
        # by the global norm over every shard and model-parallel rank, steps and all-gathers the weights
        updated, norm, _ = run.optimizer.step()
        if not updated:  # skipped (faults.NonFiniteGuard): a gradient was not finite
            return float("nan")
        if not run.cfg.train.grad_clip:  # megatron computes the norm only to clip; the step left the grads
            norm = run.optimizer.get_grad_norm()
        return float(norm)
    params = trainable_params(run.chunks)
    for p in params:  # DDP accumulated and reduced the gradients into main_grad
        p.grad = p.main_grad
    norm = grad_norm(params, run.groups)
    clip_grads(params, run.cfg.train.grad_clip, norm)
    run.optimizer.step()
    for p in params:  # the next backward must accumulate into main_grad through DDP's hooks, not here
        p.grad = None
    return norm.item()


@torch.no_grad()
def evaluate(run, batches: int) -> tuple[float, list]:
    """Mean validation loss over the first `batches` validation micro-batches of each data-parallel
    rank (the same ones every time), averaged over all of them; and the mean loss in each position
    bucket (metrics.position_buckets of data.seq_len: positions are those the model saw, restarting
    at each document under train.document_masking), reduced over every rank."""
    for chunk in run.chunks:
        chunk.eval()
    microbatches = [prepare_batch(run, b) for b in itertools.islice(run.val_loader(), batches)]
    if run.cfg.parallel.vpp > 1:  # a validation set shorter than `batches`: whole rounds of pp only
        microbatches = microbatches[:len(microbatches) - len(microbatches) % run.cfg.parallel.pp]
    edges = position_buckets(run.cfg.data.seq_len)
    bucket_of = torch.tensor([i for i, (a, b) in enumerate(edges) for _ in range(a, b)], device=run.device)
    by_position = torch.zeros(2, len(edges), dtype=torch.float64, device=run.device)
    loss = _run_schedule(run, microbatches, forward_only=True, by_position=by_position,
                         bucket_of=bucket_of) if microbatches else 0.0
    for chunk in run.chunks:
        chunk.train()
    if run.groups.world_size > 1:  # stages without the loss add zeros; TP copies scale sums and counts alike
        dist.all_reduce(by_position)
    return loss, (by_position[0] / by_position[1].clamp(min=1)).tolist()
