"""Memory per device of a training step, derived for this code (docs/scaling.md, "Memory").

Parameters are float32 and so are the gradient buffer megatron's DDP accumulates into (`main_grad`)
and both AdamW moments; on GPU the compute runs under bf16 autocast, so saved activations that feed
a matmul are bf16 (``a`` = 2 bytes; 4 on CPU, where compute is float32) while the residual stream and
the norms stay float32. Per token and layer the autograd graph keeps, with ``d`` the hidden size,
``q``/``kv`` the query and key/value widths and ``f`` the SwiGLU width (checked against the tensors
autograd saves on a real model in tests/scaling/test_cost_model.py):

    norms       2 x (4d residual input + 4d normalised + 4 rstd)            (/tp under SP)
    matmul in   a x d before q/k/v and before the MLP                      (/tp under SP)
    attention   a x (q + 2kv) the projected q, k, v (one tensor; with grouped-query attention megatron's
                reshape copies the queries out of it: a x q more); a x q the output-projection input;
                plus what the attention implementation keeps (below)        (/tp)
    MLP         5f x a: the gate/up product (2f), SiLU's output (f), its product with up (f), the
                down-projection input (f)                                   (/tp)

Attention implementations: the fused kernels (TAPA's Triton kernel, SDPA/flash) keep the output and
the log-sum-exp; the chunked PyTorch reference keeps nothing more when the queries span more than one
chunk (each chunk is recomputed in backward) and the whole score block when they fit in one: 20 bytes
per (query, key) pair and head for TAPA, 8 for a dot product, plus 5 resp. 1 per pair for the
head-independent distance and mask. Context parallelism gathers K/V of the whole sequence per layer
("allgather"; the ring keeps only its own block).

In flight: a pipeline stage holds the activations of ``p - rank`` micro-batches (1F1B) or
``2(p - 1) + (v - 1)p + 1`` model chunks (interleaved; Megatron's warm-up), the first stage the most.
Full recomputation keeps only each layer's input; selective recomputation drops what the attention
implementation keeps (its inputs q, k, v are kept anyway). Transients on top: the logits of the loss (one
piece, held with its gradient), the autocast weight copies (bf16, GPU), and, at the optimizer step,
one float32 temporary per optimizer element (AdamW's foreach square root).
"""
from __future__ import annotations

from dataclasses import dataclass

from .layout import Layout, Shape

CHUNK_QUERIES = 256         # queries per chunk of the reference attention (ops/chunked.py)
LOSS_CHUNK_TOKENS = 8192    # positions x batch per logits piece (model/lm_head.py)
PAIR_BYTES = {"tapa": (20, 5), "dot": (8, 1)}  # reference, one chunk: (per pair and head, per pair)


def attention_impl(shape: Shape, device: str) -> str:
    """What the attention of ``shape`` runs on ``device``: the reference on CPU; on GPU TAPA's Triton
    kernel (unless model.attention_impl=reference) and SDPA for the dot-product family."""
    if device == "cpu" or shape.attention_impl == "reference":
        return "reference"
    return "triton" if shape.family == "tapa" else "sdpa"


@dataclass
class Memory:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    transient: float
    runtime: float
    capacity: float
    optimizer_step: float = 0.0  # the optimizer's temporaries, held while activations are not

    @property
    def total(self) -> float:
        static = self.weights + self.gradients + self.optimizer + self.runtime
        return static + max(self.activations + self.logits + self.transient, self.optimizer_step)

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    def to_json(self) -> dict:
        gb = lambda x: round(x / 1e9, 4)  # noqa: E731
        return {"weights_gb": gb(self.weights), "gradients_gb": gb(self.gradients), "optimizer_gb": gb(self.optimizer),
                "activations_gb": gb(self.activations), "logits_gb": gb(self.logits),
                "transient_gb": gb(self.transient), "optimizer_step_gb": gb(self.optimizer_step),
                "runtime_gb": gb(self.runtime), "total_gb": gb(self.total), "capacity_gb": gb(self.capacity),
                "fits": self.fits}


def stage_params(shape: Shape, lay: Layout, stage: int) -> float:
    """Parameters on one rank of pipeline stage ``stage`` (all its model chunks)."""
    split, whole = shape.layer_params()
    layers = shape.num_layers // lay.pp
    n = layers * (split / lay.tp + whole)
    embedding = shape.vocab_size * shape.hidden_size / lay.tp
    if stage == 0:
        n += embedding
    if stage == lay.pp - 1:
        n += shape.hidden_size  # final norm
        if not shape.tie_embeddings or lay.pp > 1:  # an untied output layer, or the tied copy on the last stage
            n += embedding
    return n


def layer_activation_bytes(shape: Shape, lay: Layout, device: str, a: int) -> float:
    """Bytes one decoder layer keeps for backward for one micro-batch on one rank."""
    tokens = lay.micro_batch * shape.seq_len / lay.cp
    if lay.recompute == "full":
        return tokens / (lay.tp if lay.sequence_parallel else 1) * 4 * shape.hidden_size
    d, f = shape.hidden_size, shape.ffn_size
    q, kv = shape.num_heads * shape.head_dim / lay.tp, shape.kv_heads * shape.head_dim / lay.tp
    sp = lay.tp if lay.sequence_parallel else 1
    gqa_copy = a * q if shape.kv_heads < shape.num_heads else 0  # megatron's query reshape copies under GQA
    per_token = (2 * (8 * d + 4) + 2 * a * d) / sp + a * (2 * q + 2 * kv) + gqa_copy + 5 * a * f / lay.tp
    total = tokens * per_token
    impl = attention_impl(shape, device)
    if lay.recompute == "selective":  # the core attention keeps only its inputs, counted above
        return total
    if impl != "reference":
        total += tokens * (a * q + 4 * shape.num_heads / lay.tp)  # output and log-sum-exp
    elif tokens / lay.micro_batch <= CHUNK_QUERIES:
        per_head, per_pair = PAIR_BYTES[shape.family]
        n = shape.seq_len / lay.cp
        keys = shape.seq_len if lay.cp > 1 and lay.cp_comm == "allgather" else n
        total += (per_head * lay.micro_batch * shape.num_heads / lay.tp + per_pair) * n * keys
    if lay.cp > 1 and lay.cp_comm == "allgather":
        total += lay.micro_batch * shape.seq_len * 2 * kv * a  # gathered K and V
    return total


def in_flight(lay: Layout) -> float:
    """Micro-batches of activations the first pipeline stage holds, in units of its full set of layers."""
    p, v, m = lay.pp, lay.vpp, lay.microbatches
    if p == 1:
        return 1.0
    if v == 1:
        return float(min(p, m))
    chunks = min(2 * (p - 1) + (v - 1) * p + 1, m * v)
    return chunks / v


def logits_bytes(shape: Shape, lay: Layout) -> float:
    """The loss's logits on the last stage: all of them when the micro-batch fits one piece (kept for
    backward with the saved input of the loss), else one piece at a time (recomputed in backward),
    each with its gradient."""
    tokens = lay.micro_batch * shape.seq_len / lay.cp
    vocab = shape.vocab_size / lay.tp
    if tokens <= LOSS_CHUNK_TOKENS:
        return tokens * (2 * 4 * vocab + 9)  # float32 logits, their gradient; the mask and labels
    return 2 * LOSS_CHUNK_TOKENS * 4 * vocab


def memory(shape: Shape, lay: Layout, hw, stage: int | None = None) -> Memory:
    """Peak memory of a rank of pipeline stage ``stage`` (None: the busiest, the first stage or the last)."""
    a = hw.bytes_per_value
    shard = lay.dp * lay.cp if lay.distributed_optimizer else 1
    best = None
    for stage in sorted({0, lay.pp - 1}) if stage is None else [stage]:
        params = stage_params(shape, lay, stage)
        layers = shape.num_layers / lay.pp
        held = in_flight(lay) if stage == 0 else 1.0
        acts = held * layers * layer_activation_bytes(shape, lay, hw.device, a)
        tokens = lay.micro_batch * shape.seq_len / lay.cp
        sp = lay.tp if lay.sequence_parallel else 1
        logits = 0.0  # and the final norm and the output layer's input
        if stage == lay.pp - 1:
            logits = logits_bytes(shape, lay) + tokens / sp * (8 * shape.hidden_size + 4) + tokens * a * shape.hidden_size
        # backward of one layer: gradients of its activations alongside the saved ones, about one layer's worth
        transient = layer_activation_bytes(shape, lay, hw.device, a)
        if lay.recompute == "full":
            transient += layer_activation_bytes(shape, Layout(**{**lay.to_json(), "recompute": "none"}), hw.device, a)
        if hw.compute_dtype == "bf16":
            transient += 2 * params  # autocast's bf16 copies of the weights
        m = Memory(weights=4 * params, gradients=4 * params, optimizer=8 * params / shard,
                   activations=acts, logits=logits, transient=transient, runtime=hw.runtime_bytes,
                   capacity=hw.memory_bytes, optimizer_step=4 * params / shard)
        if best is None or m.total > best.total:
            best = m
    return best
