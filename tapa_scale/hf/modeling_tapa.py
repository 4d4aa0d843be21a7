"""Hugging Face modeling code of a tapa_scale language model: `TapaLMForCausalLM`.

This file is copied beside exported weights and loaded with `trust_remote_code=True`, so it imports only
torch and transformers. It restates, compactly, the attention scores tapa_scale trains with for the
encodings that have no Llama counterpart (TAPA, ALiBi, NoPE: RoPE-family models export as plain Llama
checkpoints); the statements it is tested against are tapa_scale/ops/tapa_reference.py (TAPA) and
tapa_scale/ops/rope.py (ALiBi), and tests/hf/ checks logits against the training model.

TAPA (Wang et al., arXiv 2509.12635): split each head into amplitude dims (the first floor(theta*D + 1/2),
tapa_split below) and phase dims (the rest);
    score(m, n) = (q_A.k_A / sqrt(d_amp)) * cos(2*pi * |pos_m - pos_n|^alpha * phi),
    phi = q_P.k_P / sqrt(d_phase) (quadratic) or (sum q_P + sum k_P) / sqrt(d_phase) (linear),
then a causal softmax and the weighted sum of V. No rotary embedding, no other scale.
ALiBi: the logit gets -slope_h * |m - n|. NoPE: the causal mask only.
Local-RoPE heads (tapa_rope_heads > 0): the first tapa_rope_heads query heads (and their key/value heads)
score q.k / sqrt(D) after the rotary embedding (rotate-half, angles pos * theta^(-2i/D)), only over keys
with 0 <= pos_m - pos_n < tapa_rope_window; the other heads are TAPA's.

Positions: a token's position is its index among the real (unmasked) tokens of its row, i.e.
cumsum(attention_mask) - 1, so left padding does not shift positions; `position_ids`, when given,
set the positions of the current tokens. Cached keys are stored as computed and their positions are
recomputed from the attention mask at every step: its prefix does not change during generation, so
each cached key keeps the position it was computed at, and TAPA/ALiBi distances |m - n| are between
absolute positions.

Fast path: for TAPA on a CUDA device, when tapa_scale is importable, attention runs through
tapa_scale.ops.tapa_attention (the fused Triton kernel); padding becomes segment ids and causality
follows positions, which is the same masking whenever positions increase along each row.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_tapa import TapaLMConfig

try:  # optional: the fused kernel, when the training library happens to be installed
    from tapa_scale.ops import tapa_attention as _fused_tapa_attention
except Exception:  # noqa: BLE001 - any failure just means "no fast path"
    _fused_tapa_attention = None

FAST_PATH_DEVICES = ("cuda",)  # device types on which the fused TAPA op is used when available
QUERY_CHUNK = 512  # queries scored at once: memory O(B * H * chunk * Nk), never N x N


# ----------------------------------------------------------------------------- positional encodings

def alibi_slopes(n_heads: int) -> torch.Tensor:
    """(n_heads,) float64 ALiBi slopes, as published (geometric; interleaved for non-powers of two)."""
    def powers(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    p = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = powers(p) + (powers(2 * p)[0::2][: n_heads - p] if p < n_heads else [])
    return torch.tensor(slopes, dtype=torch.float64)


def tapa_split(head_dim: int, theta: float) -> tuple:
    """(d_amp, d_phase) with d_amp = floor(theta*D + 1/2): halves round up, not to even as round() does
    (the rule of tapa_scale.ops.tapa_reference.tapa_split, restated here to keep this file standalone)."""
    d_amp = math.floor(theta * head_dim + 0.5)
    if not 0 < d_amp < head_dim:
        raise ValueError(f"tapa_theta={theta} with head_dim={head_dim} gives {d_amp} amplitude and "
                         f"{head_dim - d_amp} phase dims; both parts need at least one dim")
    return d_amp, head_dim - d_amp


def tapa_scores(q, k, distance, config: TapaLMConfig) -> torch.Tensor:
    """q (B, Hkv, G, C, D), k (B, Hkv, 1, Nk, D), distance (B, 1, 1, C, Nk) -> (B, Hkv, G, C, Nk)."""
    d_amp, d_phase = tapa_split(q.shape[-1], config.tapa_theta)
    amplitude = q[..., :d_amp] @ k[..., :d_amp].transpose(-1, -2) / math.sqrt(d_amp)
    q_ph, k_ph = q[..., d_amp:], k[..., d_amp:]
    if config.tapa_phase == "quadratic":
        phi = q_ph @ k_ph.transpose(-1, -2) / math.sqrt(d_phase)
    else:
        phi = (q_ph.sum(-1)[..., :, None] + k_ph.sum(-1)[..., None, :]) / math.sqrt(d_phase)
    return amplitude * torch.cos(2 * math.pi * distance.pow(config.tapa_alpha) * phi)


def rotate(x, pos, theta: float) -> torch.Tensor:
    """x (B, H, N, D) rotated by angles pos (B, N) * theta^(-2i/D), halves [x1, x2] -> [x1 c - x2 s, x2 c + x1 s]."""
    d = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    angles = pos.to(torch.float64)[:, None, :, None] * inv_freq
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def attend(q, k, v, q_pos, k_pos, key_mask, past: int, config: TapaLMConfig) -> torch.Tensor:
    """Causal attention of q (B, Hq, Nq, D) over k, v (B, Hkv, Nk, D), Nk = past + Nq.

    q_pos (B, Nq), k_pos (B, Nk) int64 positions; key_mask (B, Nk) bool (False = padding). Causality is
    by index (query i sees keys 0..past+i). Scores and softmax in float32 (float64 for float64 inputs);
    a query that sees no key gets output 0. Returns (B, Hq, Nq, D) in q's dtype.
    """
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qg = q.to(compute).view(B, Hkv, Hq // Hkv, Nq, D)  # (B, Hkv, G, Nq, D): K/V never repeated
    kc, vc = k.to(compute)[:, :, None], v.to(compute)[:, :, None]  # (B, Hkv, 1, Nk, D)
    kind = config.position_encoding
    scale = 1.0 / math.sqrt(D)
    slopes = alibi_slopes(Hq).to(device=q.device, dtype=compute).view(1, Hkv, -1, 1, 1) if kind == "alibi" else None
    local = config.tapa_rope_heads // (Hq // Hkv) if kind == "tapa" else 0  # key/value heads of the local-RoPE heads
    if local:
        q_rot = rotate(qg[:, :local].reshape(B, -1, Nq, D), q_pos, config.tapa_rope_theta).view(B, local, -1, Nq, D)
        k_rot = rotate(kc[:, :local, 0], k_pos, config.tapa_rope_theta)[:, :, None]
    outs = []
    for start in range(0, Nq, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, Nq)
        distance = (q_pos[:, start:stop, None] - k_pos[:, None, :]).abs().to(compute)[:, None, None]
        if kind == "tapa":
            scores = tapa_scores(qg[:, :, :, start:stop], kc, distance, config)
            if local:
                near = (q_pos[:, start:stop, None] - k_pos[:, None, :]) < config.tapa_rope_window  # (B, C, Nk)
                dot = (q_rot[:, :, :, start:stop] @ k_rot.transpose(-1, -2) * scale).masked_fill(
                    ~near[:, None, None], float("-inf"))
                scores = torch.cat((dot, scores[:, local:]), dim=1)
        else:
            scores = qg[:, :, :, start:stop] @ kc.transpose(-1, -2) * scale
            if slopes is not None:
                scores = scores - slopes * distance
        rows = past + torch.arange(start, stop, device=q.device)
        keep = (torch.arange(Nk, device=q.device)[None, :] <= rows[:, None])[None] & key_mask[:, None, :]
        scores = scores.masked_fill(~keep[:, None, None], float("-inf"))  # (B, Hkv, G, C, Nk)
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        probs = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0.0))
        outs.append(probs @ vc)
    return torch.cat(outs, dim=3).reshape(B, Hq, Nq, D).to(q.dtype)


def attend_fused(q, k, v, q_pos, k_pos, key_mask, past: int, config: TapaLMConfig) -> torch.Tensor:
    """TAPA through tapa_scale's fused op: padding as segment ids (0 = pad), causal by positions."""
    segments = key_mask.long()
    return _fused_tapa_attention(
        q, k, v, alpha=config.tapa_alpha, theta=config.tapa_theta, phase=config.tapa_phase, causal=True,
        q_positions=q_pos, k_positions=k_pos, q_segment_ids=segments[:, past:], k_segment_ids=segments)


def use_fast_path(config: TapaLMConfig, q: torch.Tensor) -> bool:
    """TAPA on a FAST_PATH_DEVICES device with tapa_scale importable, and inputs the kernel takes
    (dtype, head dim): anything else stays on `attend`, which serves every case."""
    if (config.position_encoding != "tapa" or _fused_tapa_attention is None or config.tapa_rope_heads
            or q.device.type not in FAST_PATH_DEVICES):
        return False
    if not q.is_cuda:  # CPU only when a test forces it: the op then runs its reference
        return True
    try:
        from tapa_scale.ops.tapa_triton import triton_unsupported_reason
    except Exception:  # noqa: BLE001 - no Triton: no fused kernel
        return False
    return triton_unsupported_reason(q) is None


# ----------------------------------------------------------------------------- the transformer

class TapaRMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 (float64 for float64 inputs),
    returned in x's dtype."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x):
        xf = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xf.dtype)).to(x.dtype)


class TapaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: TapaLMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TapaAttention(nn.Module):
    """Grouped-query self-attention under the configured positional encoding, with a KV cache."""

    def __init__(self, config: TapaLMConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        h, d = config.hidden_size, config.head_dim
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.q_proj = nn.Linear(h, self.n_heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv * d, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv * d, bias=False)
        self.o_proj = nn.Linear(self.n_heads * d, h, bias=False)

    def forward(self, x, q_pos, k_pos, key_mask, cache: Optional[Cache]):
        B, N, _ = x.shape
        # (B, N, H*D) -> (B, H, N, D)
        q = self.q_proj(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, N, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, N, self.n_kv, self.head_dim).transpose(1, 2)
        past = k_pos.shape[1] - N
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        fn = attend_fused if use_fast_path(self.config, q) else attend
        out = fn(q, k, v, q_pos, k_pos, key_mask, past, self.config)  # (B, H, N, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, N, self.n_heads * self.head_dim))


class TapaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: TapaLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = TapaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = TapaAttention(config, layer_idx)
        self.post_attention_layernorm = TapaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = TapaMLP(config)

    def forward(self, x, q_pos, k_pos, key_mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), q_pos, k_pos, key_mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def token_positions(attention_mask, position_ids, past: int, n: int, batch: int, device):
    """-> q_pos (B, n), k_pos (B, past+n) int64 and key_mask (B, past+n) bool.

    Positions count real tokens (cumsum of the mask minus one; padding gets 0); position_ids, when
    given, override the positions of the n current tokens.
    """
    total = past + n
    if attention_mask is None:
        key_mask = torch.ones(batch, total, dtype=torch.bool, device=device)
    elif attention_mask.dim() != 2 or attention_mask.shape[-1] != total:
        raise ValueError(f"attention_mask must be 2-D (batch, past + new tokens = {total}); got shape "
                         f"{tuple(attention_mask.shape)} (4-D masks and static caches are not supported)")
    else:
        key_mask = attention_mask.to(device=device, dtype=torch.bool)
    k_pos = ((key_mask.long().cumsum(-1) - 1) * key_mask).clamp(min=0)
    if position_ids is not None:
        k_pos = torch.cat([k_pos[:, :past], position_ids.to(device, torch.long).expand(batch, n)], dim=1)
    return k_pos[:, past:], k_pos, key_mask


class TapaLMPreTrainedModel(PreTrainedModel):
    config_class = TapaLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["TapaDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_cache_class = True

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, TapaRMSNorm):
            module.weight.data.fill_(1.0)


class TapaLMModel(TapaLMPreTrainedModel):
    """Embeddings, decoder layers and the final norm: input_ids -> hidden states."""

    def __init__(self, config: TapaLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(TapaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = TapaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if isinstance(past_key_values, (tuple, list)):  # legacy ((k, v), ...) caches
            past_key_values = DynamicCache.from_legacy_cache(past_key_values)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        B, N = x.shape[:2]
        q_pos, k_pos, key_mask = token_positions(attention_mask, position_ids, past, N, B, x.device)
        for layer in self.layers:
            x = layer(x, q_pos, k_pos, key_mask, past_key_values if use_cache else None)
        return self.norm(x), (past_key_values if use_cache else None)


class TapaLMForCausalLM(TapaLMPreTrainedModel, GenerationMixin):
    """The language model: logits (B, N, vocab); loss with `labels` (next-token, -100 ignored)."""

    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: TapaLMConfig):
        super().__init__(config)
        self.model = TapaLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, return_dict=None,
                **kwargs):
        hidden, cache = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                   position_ids=position_ids, past_key_values=past_key_values,
                                   inputs_embeds=inputs_embeds, use_cache=use_cache)
        # generate() asks for the last position only (logits_to_keep=1): skip the others' projection
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep])
        loss = None
        if labels is not None:
            shifted = labels[:, 1:].to(logits.device)
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), shifted.flatten(), ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)
        return out if return_dict is not False else out.to_tuple()
