"""Model FLOPs per token, by one stated formula (docs/operations.md, "Model FLOPs").

Forward, per token, a multiply-add counted as 2 FLOPs, for a decoder of ``L`` layers, hidden size
``d``, ``H`` query and ``G`` key/value heads of size ``h``, SwiGLU width ``f`` and vocabulary ``V``:

    dense      = L * 2 * (d*H*h + 2*d*G*h + H*h*d + 3*d*f)     q, k, v, o; gate, up, down
    attention  = L * 2 * keys * H * (s_dims + h)                scores, then probabilities x V
    output     = 2 * d * V                                      logits (tied or not)

``keys`` is the mean number of keys a query attends to: ``(s + 1) / 2`` for causal attention over a
sequence of ``s`` (the exact triangle; Megatron's convention) or ``s`` when counted non-causal
(torchtitan's and llm-foundry's); document masking is not subtracted. ``s_dims`` is the dims of the
score's dot products: ``h`` for dot-product attention and for TAPA's quadratic phase, whose two dot
products (amplitude dims and phase dims) together span the head; ``d_amp`` for TAPA's linear phase,
whose phase is a sum, not a product. TAPA's elementwise work on each score (the power of the
distance, the two products, the cosine, the product with the amplitude) is counted apart, in
``tapa_elementwise``, 5 per score, and is never part of the model FLOPs. Embedding lookups, norms,
activations, residuals and softmax are not counted. Training is 3x the forward (backward = 2x);
recomputation is not counted (model FLOPs, not hardware FLOPs).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ops.tapa_reference import tapa_amp_dims

TAPA_ELEMENTWISE_PER_SCORE = 5


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs per token, by part."""
    dense: float
    attention: float
    output: float
    tapa_elementwise: float = 0.0

    @property
    def forward(self) -> float:
        return self.dense + self.attention + self.output

    @property
    def train(self) -> float:
        """Model FLOPs of one training token: forward and backward."""
        return 3 * self.forward


def model_flops(m, seq_len: int, vocab_size: int, *, causal: bool = True) -> FlopCount:
    """Per-token forward FLOPs of the model ``m`` (a ModelConfig) on sequences of ``seq_len``."""
    d, heads, kv, h, layers = m.hidden_size, m.num_heads, m.kv_heads, m.head_dim, m.num_layers
    dense = layers * 2 * (d * heads * h + 2 * d * kv * h + heads * h * d + 3 * d * m.ffn_size)
    keys = (seq_len + 1) / 2 if causal else float(seq_len)
    tapa = m.pos_encoding == "tapa"
    s_dims = tapa_amp_dims(h, m.tapa.theta) if tapa and m.tapa.phase == "linear" else h
    attention = layers * 2 * keys * heads * (s_dims + h)
    elementwise = layers * keys * heads * TAPA_ELEMENTWISE_PER_SCORE if tapa else 0.0
    return FlopCount(dense=float(dense), attention=float(attention), output=float(2 * d * vocab_size),
                     tapa_elementwise=float(elementwise))
