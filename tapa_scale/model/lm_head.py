"""The output layer and loss, chunked over the sequence so that memory stays linear in its length.

megatron's GPTModel turns the whole sequence into logits (s, b, V) before the cross entropy, and its
backward keeps a softmax of that size: at 32k tokens and a 32k vocabulary that is 4 GiB per sample in
float32. `GPT` is that model with one change: given labels, it computes the per-token loss piece by
piece, `LOSS_CHUNK_TOKENS` (sequence positions x batch) at a time, and in training recomputes each
piece's logits in backward instead of keeping them. Training and evaluation both go through it, so
the loss that is trained is the loss that is evaluated. A sequence that fits one piece (every short
training run) takes megatron's own path unchanged.

Under sequence parallelism each rank holds s/tp positions and the output layer gathers them across
the tensor-parallel group; the pieces are taken from every rank's shard at the same offsets, and the
labels are arranged the same way, so the gather keeps working per piece.

`last_logits` gives the logits of the last k positions only (retrieval scoring needs no more).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from megatron.core.models.gpt import GPTModel
from torch.utils.checkpoint import checkpoint

LOSS_CHUNK_TOKENS = 8192  # sequence positions x batch turned into logits at once


class GPT(GPTModel):
    """megatron-core's GPTModel with the chunked loss (module docstring) and last-k logits."""

    _hidden_only = False

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, *args, **kwargs):
        if self._hidden_only:
            return hidden_states
        inference = kwargs.get("inference_context") is not None and not self.training
        if labels is None or not self.post_process or self.config.mtp_num_layers is not None or inference:
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, *args, **kwargs)
        return chunked_lm_loss(self, hidden_states, labels)

    @contextlib.contextmanager
    def returning_hidden_states(self):
        """Inside, forward returns the final (normed) hidden states (s, b, h) instead of logits or loss."""
        self._hidden_only = True
        try:
            yield
        finally:
            self._hidden_only = False

    def last_logits(self, input_ids: torch.Tensor, k: int, **forward_kwargs) -> torch.Tensor:
        """Logits (b, k, V), gathered over tensor parallelism, of the last k positions of input_ids (b, s)."""
        if self.config.sequence_parallel or self.config.context_parallel_size > 1:
            raise ValueError("last_logits needs the whole sequence on this rank (no sequence or context parallelism)")
        with self.returning_hidden_states():
            hidden = self(input_ids, None, None, **forward_kwargs)
        logits, _ = self.output_layer(hidden[-k:], weight=_output_weight(self), runtime_gather_output=True)
        return logits.transpose(0, 1)


def _output_weight(model: GPTModel):
    return model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None


def chunked_lm_loss(model: GPTModel, hidden: torch.Tensor, labels: torch.Tensor,
                    chunk_tokens: Optional[int] = None) -> torch.Tensor:
    """Per-token cross entropy (b, s) of hidden states (s_local, b, h) against labels (b, s), where
    s = s_local x (tp under sequence parallelism, else 1); equal to GPTModel's loss up to rounding.
    chunk_tokens: positions x batch per piece (None: LOSS_CHUNK_TOKENS)."""
    chunk_tokens = chunk_tokens or LOSS_CHUNK_TOKENS
    s_local, b = hidden.shape[:2]
    n = model.config.tensor_model_parallel_size if model.output_layer.sequence_parallel else 1
    step = max(1, chunk_tokens // (b * n))
    weight = _output_weight(model)

    def piece(h, y):  # h (c, b, hidden), y (b, n * c) -> loss (b, n * c)
        logits, _ = model.output_layer(h, weight=weight)
        return model.compute_language_model_loss(y, logits)

    if s_local <= step:
        return piece(hidden, labels)
    by_rank = labels.reshape(b, n, s_local)  # sequence-parallel rank r holds positions [r * s_local, (r+1) * s_local)
    record = torch.is_grad_enabled() and hidden.requires_grad
    losses = []
    for start in range(0, s_local, step):
        h = hidden[start:start + step]
        y = by_rank[:, :, start:start + step].reshape(b, -1)
        loss = checkpoint(piece, h, y, use_reentrant=False) if record else piece(h, y)
        losses.append(loss.reshape(b, n, -1))
    return torch.cat(losses, dim=2).reshape(b, n * s_local)
