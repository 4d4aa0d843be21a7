"""One attention entry for every positional encoding: TAPA and the baselines it is compared with.

`attention(q, k, v, encoding, ...)` is what the model's core-attention module and context parallelism
call; `encoding` (a `PositionalEncoding`) says which score is used. Everything takes global token
positions, so a sequence shard or a packed document is scored as in the full sequence.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F

from . import rope
from .chunked import as_position_rows, check_qkv, chunked_attention

ENCODINGS = ("tapa", "rope", "pi", "yarn", "llama3", "nope", "alibi")
ROTARY = ("rope", "pi", "yarn", "llama3")  # the encodings that rotate q and k (tapa_scale/ops/rope.py)
IMPLS = ("auto", "reference", "triton")


@dataclass(frozen=True)
class PositionalEncoding:
    """Which attention score to use and its parameters (paper defaults for TAPA)."""
    kind: str = "tapa"
    alpha: float = 0.1             # TAPA distance exponent
    theta: float = 0.5             # TAPA amplitude share of the head dim
    phase: str = "quadratic"       # TAPA phase form: quadratic | linear
    rope_base: float = 10000.0     # rope, pi, yarn, llama3
    scale: float = 1.0             # pi, yarn, llama3: context extension factor
    original_length: int = 0       # yarn, llama3: the context length the base model was trained at
    beta_fast: float = 32.0        # yarn ramp
    beta_slow: float = 1.0
    attention_factor: float = 0.0  # yarn: factor on cos/sin; 0 = 0.1 ln(scale) + 1
    low_freq_factor: float = 1.0   # llama3 wavelength bounds: original_length / these
    high_freq_factor: float = 4.0
    num_heads: int = 0             # alibi: the model's query heads (0: the heads attention is given)
    rope_heads: int = 0            # tapa: the first rope_heads query heads score by RoPE (rope_base) ...
    rope_window: int = 0           # ... over the last rope_window positions only (q - k < rope_window)

    def __post_init__(self):
        if self.kind not in ENCODINGS:
            raise ValueError(f"positional encoding must be one of {ENCODINGS}, got {self.kind!r}")

    def inv_freq(self, head_dim: int) -> torch.Tensor:
        """Rotary frequencies of rope / pi / yarn / llama3."""
        if self.kind == "pi":
            return rope.pi_inv_freq(head_dim, self.rope_base, self.scale)
        if self.kind == "yarn":
            return rope.yarn_inv_freq(head_dim, self.rope_base, self.scale, self.original_length,
                                      self.beta_fast, self.beta_slow)
        if self.kind == "llama3":
            return rope.llama3_inv_freq(head_dim, self.rope_base, self.scale, self.original_length,
                                        self.low_freq_factor, self.high_freq_factor)
        return rope.rope_inv_freq(head_dim, self.rope_base)

    def logit_factor(self) -> float:
        """What the rotary encodings multiply q.k by: YaRN's attention factor squared (it scales both
        cos and sin of q and of k), 1 for the others."""
        if self.kind != "yarn":
            return 1.0
        return (self.attention_factor or rope.yarn_attention_factor(self.scale)) ** 2

    def alibi_slopes(self, local_heads: int, head_offset: int = 0) -> torch.Tensor:
        """Slopes of global heads head_offset .. head_offset + local_heads - 1: a tensor-parallel rank
        holds a slice of the heads, and each keeps the slope it has in the whole model."""
        total = self.num_heads or local_heads
        if head_offset < 0 or head_offset + local_heads > total:
            raise ValueError(f"head_offset={head_offset} with {local_heads} local heads: expected "
                             f"0 <= head_offset <= {total - local_heads} (num_heads={total})")
        return rope.alibi_slopes(total)[head_offset:head_offset + local_heads]


def tapa_attention(q, k, v, *, alpha=0.1, theta=0.5, phase="quadratic", causal=True,
                   q_positions=None, k_positions=None, q_segment_ids=None, k_segment_ids=None,
                   return_lse=False, impl="auto"):
    """TAPA attention (see tapa_reference.py for the formula, shapes and dtypes).

    impl: "reference" (pure PyTorch, chunked), "triton" (fused kernel, GPU or Triton interpreter),
    "auto" (the kernel for CUDA tensors when Triton is importable, else the reference).
    """
    from .tapa_reference import tapa_attention_reference

    kwargs = dict(alpha=alpha, theta=theta, phase=phase, causal=causal, q_positions=q_positions,
                  k_positions=k_positions, q_segment_ids=q_segment_ids, k_segment_ids=k_segment_ids,
                  return_lse=return_lse)
    if resolve_impl(impl, q) == "triton":
        from .tapa_triton import tapa_attention_triton
        _ran("triton")
        return tapa_attention_triton(q, k, v, **kwargs)
    _ran("reference")
    return tapa_attention_reference(q, k, v, **kwargs)


# What the latest attention call of this process ran, and the fallback reasons already reported. The
# ops layer owns both; callers read them through last_attention_impl().
_last_impl: Optional[str] = None
_warned_reasons: set = set()


def _ran(impl: str) -> None:
    global _last_impl
    _last_impl = impl


def last_attention_impl() -> Optional[str]:
    """What the latest attention call in this process ran: "triton" (the fused TAPA kernel),
    "reference" (pure PyTorch, TAPA or a baseline), "sdpa" (torch SDPA, baselines with a plain causal
    mask) or "flex" (FlexAttention, baselines with documents, positions or ALiBi on CUDA); None before
    any call. The training loop logs it in every metrics.jsonl record (key attention_impl)."""
    return _last_impl


def resolve_impl(impl: str, q: torch.Tensor) -> str:
    """The TAPA implementation `impl` stands for, given inputs like q."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return decide_auto_impl(q.is_cuda, triton_unavailable_reason(q) if q.is_cuda else None)


def decide_auto_impl(device_is_cuda: bool, reason: Optional[str]) -> str:
    """impl="auto": the kernel for CUDA inputs it supports (reason None), else the reference.

    On CPU the reference is the intended path. On CUDA a fallback is slower and holds more memory
    than the kernel, so it is reported: one warning per process and reason (dtype, head dim, triton
    missing), not one per layer and step."""
    if not device_is_cuda:
        return "reference"
    if reason is None:
        return "triton"
    if reason not in _warned_reasons:
        _warned_reasons.add(reason)
        warnings.warn(f"TAPA attention on CUDA runs the PyTorch reference instead of the Triton kernel "
                      f"(impl='auto'): {reason}", RuntimeWarning, stacklevel=2)
    return "reference"


def triton_unavailable_reason(q: torch.Tensor) -> Optional[str]:
    """None if Triton is importable and the kernel supports q's dtype, head dim and device, else why not."""
    try:
        from .tapa_triton import triton_unsupported_reason
    except ImportError as e:
        return f"triton is not importable ({e})"
    reason = triton_unsupported_reason(q)
    return None if reason is None else f"the kernel does not support {reason}"


def dot_product_scores(q, k, q_pos, k_pos, *, scale: float, slopes: Optional[torch.Tensor]):
    """Scaled dot-product logits for a query chunk, with an optional ALiBi bias.

    q (B, Hkv, G, C, D), k (B, Hkv, Nk, D), q_pos (Bp, C), k_pos (Bp, Nk) -> (B, Hkv, G, C, Nk).
    """
    scores = (q @ k[:, :, None].transpose(-1, -2)) * scale
    if slopes is not None:
        distance = (q_pos[:, :, None] - k_pos[:, None, :]).abs().to(scores.dtype)  # (Bp, C, Nk)
        hkv, g = q.shape[1], q.shape[2]
        per_head = slopes.to(scores)[None, :, None, None].reshape(1, hkv, g, 1, 1)
        scores = scores - per_head * distance[:, None, None]
    return scores


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, encoding: PositionalEncoding, *,
              causal: bool = True, q_positions=None, k_positions=None, q_segment_ids=None,
              k_segment_ids=None, return_lse: bool = False, impl: str = "auto", head_offset: int = 0):
    """Attention under any positional encoding. q (B, Hq, Nq, D), k/v (B, Hkv, Nk, D).

    head_offset: global index of q's first head (a tensor-parallel rank's share; ALiBi slopes are
    per global head, see PositionalEncoding.num_heads).

    Positions and segment ids: (N,) or (B, N) integers (positions default to arange). Returns out
    (B, Hq, Nq, D) in q's dtype and, with return_lse, lse (B, Hq, Nq) float32 (natural log).
    """
    masks = dict(causal=causal, q_positions=q_positions, k_positions=k_positions,
                 q_segment_ids=q_segment_ids, k_segment_ids=k_segment_ids, return_lse=return_lse)
    if encoding.kind == "tapa" and encoding.rope_heads:
        return tapa_with_local_rope(q, k, v, encoding, impl=impl, **masks)
    if encoding.kind == "tapa":
        return tapa_attention(q, k, v, alpha=encoding.alpha, theta=encoding.theta,
                              phase=encoding.phase, impl=impl, **masks)
    check_qkv(q, k, v)
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D)
    slopes = None
    if encoding.kind in ROTARY:
        inv_freq = encoding.inv_freq(D)
        q = rope.apply_rotary(q, as_position_rows(q_positions, q.shape[0], q.shape[2], q.device, "q_positions"), inv_freq)
        k = rope.apply_rotary(k, as_position_rows(k_positions, k.shape[0], k.shape[2], k.device, "k_positions"), inv_freq)
        scale *= encoding.logit_factor()
    elif encoding.kind == "alibi":
        slopes = encoding.alibi_slopes(q.shape[1], head_offset)
    if _sdpa_applies(q, k, impl, slopes, masks):
        _ran("sdpa")
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])
    if _flex_applies(q, impl, masks):
        _ran("flex")
        return flex_attention_of(q, k, v, scale=scale, slopes=slopes, **masks)
    score_fn = partial(dot_product_scores, scale=scale, slopes=slopes)
    _ran("reference")
    return chunked_attention(q, k, v, score_fn, **masks)


def local_rope_scores(q, k, q_pos, k_pos, *, scale: float, window: int):
    """Dot-product logits of rotated q and k for keys at most window - 1 positions behind the query
    (a ScoreFn: farther keys get -inf, so such a head never meets a distance it did not train on)."""
    scores = dot_product_scores(q, k, q_pos, k_pos, scale=scale, slopes=None)
    far = (q_pos[:, :, None] - k_pos[:, None, :]) >= window  # (Bp, C, Nk)
    return scores.masked_fill(far[:, None, None], float("-inf"))


def tapa_with_local_rope(q, k, v, encoding: PositionalEncoding, *, impl="auto", **masks):
    """TAPA whose first `rope_heads` query heads (with their key/value heads) attend by RoPE within a
    local window instead: those heads through the chunked reference, the others through TAPA as usual.
    The head split must follow the key/value groups (rope_heads a multiple of Hq / Hkv)."""
    check_qkv(q, k, v)
    h, group = encoding.rope_heads, q.shape[1] // k.shape[1]
    if h % group or not 0 < h < q.shape[1] or encoding.rope_window < 1:
        raise ValueError(f"rope_heads={h}, rope_window={encoding.rope_window} with {q.shape[1]} query and "
                         f"{k.shape[1]} key/value heads: expected 0 < rope_heads < query heads, a multiple "
                         f"of {group}, and rope_window >= 1")
    hk, D = h // group, q.shape[-1]
    inv_freq = rope.rope_inv_freq(D, encoding.rope_base)
    rows = lambda ids, t, name: as_position_rows(ids, t.shape[0], t.shape[2], t.device, name)  # noqa: E731
    ql = rope.apply_rotary(q[:, :h], rows(masks["q_positions"], q, "q_positions"), inv_freq)
    kl = rope.apply_rotary(k[:, :hk], rows(masks["k_positions"], k, "k_positions"), inv_freq)
    score_fn = partial(local_rope_scores, scale=1.0 / math.sqrt(D), window=encoding.rope_window)
    local = chunked_attention(ql, kl, v[:, :hk], score_fn, **masks)
    rest = tapa_attention(q[:, h:], k[:, hk:], v[:, hk:], alpha=encoding.alpha, theta=encoding.theta,
                          phase=encoding.phase, impl=impl, **masks)
    if masks["return_lse"]:
        return torch.cat((local[0], rest[0]), 1), torch.cat((local[1], rest[1]), 1)
    return torch.cat((local, rest), 1)


def flex_attention_of(q, k, v, *, scale, slopes, causal, q_positions, k_positions, q_segment_ids,
                      k_segment_ids, return_lse=False):
    """The dot-product score under FlexAttention (ops/flex.py), with attention()'s position and segment
    arguments (return_lse is never set here: _flex_applies keeps that case for the chunked path)."""
    from .flex import flex_dot_product_attention

    if (q_segment_ids is None) != (k_segment_ids is None):
        raise ValueError("q_segment_ids and k_segment_ids must be given together")
    B, Nq, Nk = q.shape[0], q.shape[2], k.shape[2]
    rows = lambda ids, n, name: None if ids is None else as_position_rows(ids, B, n, q.device, name)  # noqa: E731
    q_pos, k_pos = as_position_rows(q_positions, B, Nq, q.device, "q_positions"), \
        as_position_rows(k_positions, B, Nk, q.device, "k_positions")
    return flex_dot_product_attention(q, k, v, scale=scale, slopes=slopes, causal=causal, q_pos=q_pos, k_pos=k_pos,
                                      q_seg=rows(q_segment_ids, Nq, "q_segment_ids"),
                                      k_seg=rows(k_segment_ids, Nk, "k_segment_ids"))


def _flex_applies(q, impl, masks) -> bool:
    """FlexAttention serves the rest on GPU (packed documents, explicit positions, ALiBi), except where
    context parallelism asks for the log-sum-exp."""
    return q.is_cuda and impl != "reference" and not masks["return_lse"]


def _sdpa_applies(q, k, impl, slopes, masks) -> bool:
    """torch SDPA (flash / cuDNN) serves the plain case on GPU: default positions, no segments, no lse."""
    plain = (masks["q_positions"] is None and masks["k_positions"] is None
             and masks["q_segment_ids"] is None and not masks["return_lse"] and slopes is None
             and q.shape[2] == k.shape[2])
    return plain and impl != "reference" and q.is_cuda
