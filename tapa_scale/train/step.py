"""One optimizer step (forward, backward over the micro-batches, clip, update) and validation loss."""
from __future__ import annotations

import itertools

import torch

from ..model import TokenLayout


def forward_loss(model, batch: dict, device, document_masking: bool) -> torch.Tensor:
    """Mean next-token loss of one micro-batch (input_ids, labels, position_ids, segment_ids)."""
    ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
    layout = None
    if document_masking:  # attend within each packed document, positions restarting at 0
        layout = TokenLayout(positions=batch["position_ids"].to(device),
                             segment_ids=batch["segment_ids"].to(device))
    return model(ids, None, None, labels=labels, packed_seq_params=layout).float().mean()


@torch.no_grad()
def evaluate(run, batches: int) -> float:
    """Mean validation loss over the first `batches` validation micro-batches (same ones every time)."""
    run.model.eval()
    losses = []
    with run.autocast():
        for batch in itertools.islice(run.val_loader(), batches):
            losses.append(forward_loss(run.model, batch, run.device, run.document_masking).item())
    run.model.train()
    return sum(losses) / max(1, len(losses))


def train_step(run, batches) -> tuple[float, float]:
    """One optimizer step over `run.accumulation` micro-batches; returns (loss, grad norm)."""
    run.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(run.accumulation):
        with run.autocast():
            loss = forward_loss(run.model, next(batches), run.device, run.document_masking)
        (loss / run.accumulation).backward()
        total += loss.item() / run.accumulation
    clip = run.cfg.train.grad_clip or float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip).item()
    run.optimizer.step()
    return total, grad_norm
