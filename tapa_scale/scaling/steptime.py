"""Time of one optimizer step, by part (docs/scaling.md, "Step time").

The busiest pipeline stage sets the pace. For one micro-batch it spends (``t`` = micro-batch tokens
on the rank, ``s/cp`` per sequence; GEMMs see all ``t`` even under sequence parallelism):

    gemm          per layer the four projections (q/k/v, output, gate/up, down) after the TP split,
                  each forward, input-gradient and weight-gradient product at its own shape, timed by
                  the profile's GEMM table; the output layer on the last stage (its forward once more
                  when the loss is computed in pieces)
    attention     the profile's measured cost per (query, key) pair for the implementation and family
                  at the local query length and batch x local heads, over batch x local heads x
                  causal pairs / cp
    memory_bound  elementwise traffic (norms, residual adds, SwiGLU, layout copies, rotary, the loss'
                  softmax, the embedding gradient) at the profile's bandwidth for tensors of their
                  size (a layer's: the mean of the residual-stream and SwiGLU widths; the loss': the
                  logits), plus a fixed cost per operator
    tp_comm       per layer two all-reduces of t x d forward and two backward; with sequence
                  parallelism two all-gathers and two reduce-scatters forward, two reduce-scatters and
                  four all-gathers backward (the input is gathered again for the weight gradient)
    cp_comm       "allgather": K/V of the whole sequence gathered forward, their gradients
                  reduce-scattered backward; "ring": cp - 1 hops of the K/V block forward and of K/V and
                  their gradients backward, hidden behind the block's attention where that is longer
    pp_comm       one activation forward and one gradient backward per model chunk

Compute parts are multiplied by the profile's ``node_slowdown`` when more than one process of a node
is busy (CPU processes share caches and memory bandwidth). Per step: ``m`` micro-batches of those, the bubble ``(p - 1) / v`` micro-batch times (Narayanan et
al.), the gradient reduction over data x context ranks (exposed unless overlap_grad_reduce; the
distributed optimizer reduce-scatters gradients and all-gathers parameters instead) and the optimizer
(AdamW's passes over its elements). Full recomputation adds one forward of every layer.
"""
from __future__ import annotations

from dataclasses import dataclass

from .layout import Layout, Shape
from .memory import LOSS_CHUNK_TOKENS, attention_impl, stage_params

PARTS = ("gemm", "attention", "memory_bound", "tp_comm", "cp_comm", "pp_comm", "bubble", "dp_comm", "optimizer")
OPS_PER_LAYER = 90          # elementwise operators per layer, forward and backward (eager PyTorch)
OPTIMIZER_BYTES = 64        # bytes moved per optimizer element: AdamW's reads and writes, its
                            # temporary, the gradient norm, clipping and zeroing the buffer
OPTIMIZER_OPS = 14          # per-tensor operators of the foreach AdamW step, norm and clipping
BUCKET_BYTES = 40e6         # megatron DDP's gradient bucket


@dataclass
class StepTime:
    parts: dict

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def bottleneck(self) -> str:
        return max(self.parts, key=self.parts.get)


def _groups_inter_node(lay: Layout, per_node: int) -> dict:
    """Whether each group spans nodes, for megatron's rank order (tp fastest, then cp, dp, pp)."""
    return {"tp": lay.tp > per_node, "cp": lay.tp * lay.cp > per_node,
            "dp": lay.tp * lay.cp * lay.dp > per_node, "pp": lay.world > per_node}


def _linear(hw, t: float, fan_in: float, fan_out: float, forwards: int = 1) -> float:
    """Forward(s), input gradient and weight gradient of a [t, fan_in] x [fan_in, fan_out] product."""
    return forwards * hw.gemm_time(t, fan_out, fan_in) + hw.gemm_time(t, fan_in, fan_out) \
        + hw.gemm_time(fan_in, fan_out, t)


def _stage_microbatch(shape: Shape, lay: Layout, hw, stage: int, inter: dict) -> dict:
    """Seconds of one micro-batch on a rank of pipeline stage ``stage``, by part."""
    a = hw.bytes_per_value
    d, f, hd = shape.hidden_size, shape.ffn_size, shape.head_dim
    q, kv = shape.num_heads * hd / lay.tp, shape.kv_heads * hd / lay.tp
    n = shape.seq_len / lay.cp
    t = lay.micro_batch * n
    layers = shape.num_layers / lay.pp
    fwd = 2 if lay.recompute == "full" else 1
    parts = dict.fromkeys(PARTS[:6], 0.0)

    per_layer = (_linear(hw, t, d, q + 2 * kv, fwd) + _linear(hw, t, q, d, fwd)
                 + _linear(hw, t, d, 2 * f / lay.tp, fwd) + _linear(hw, t, f / lay.tp, d, fwd))
    pairs = lay.micro_batch * shape.num_heads / lay.tp * shape.seq_len * (shape.seq_len + 1) / 2 / lay.cp
    impl = attention_impl(shape, hw.device)
    attn = hw.attention_time(impl, shape.family, int(n), pairs, hd, lay.micro_batch * shape.num_heads / lay.tp) \
        * (4 / 3 if lay.recompute in ("full", "selective") else 1)  # its forward run again in backward
    sp = lay.tp if lay.sequence_parallel else 1
    rotary = 6 * a * (q + kv) if shape.encoding in ("rope", "pi", "yarn", "llama3") else 0
    elem_fwd = (48 * d + 24 * d) / sp + 5 * a * f / lay.tp + 2 * a * (q + 2 * kv) + 2 * a * q + rotary
    mem = hw.memory_time(t * elem_fwd * (2 + fwd), OPS_PER_LAYER * (2 + fwd) // 3, t * a * (d / sp + 2 * f / lay.tp) / 3)
    parts["gemm"] += layers * per_layer
    parts["attention"] += layers * attn
    parts["memory_bound"] += layers * mem

    msg = t * d * a
    if lay.tp > 1:
        if lay.sequence_parallel:
            one = (fwd * (2 * hw.collective_time("all_gather", msg, lay.tp, inter["tp"])
                          + 2 * hw.collective_time("reduce_scatter", msg, lay.tp, inter["tp"]))
                   + 2 * hw.collective_time("reduce_scatter", msg, lay.tp, inter["tp"])
                   + 4 * hw.collective_time("all_gather", msg, lay.tp, inter["tp"]))
        else:
            one = (2 * fwd + 2) * hw.collective_time("all_reduce", msg, lay.tp, inter["tp"])
        parts["tp_comm"] += layers * one
    if lay.cp > 1:
        gathered = lay.micro_batch * shape.seq_len * 2 * kv * a
        if lay.cp_comm == "allgather":
            one = fwd * hw.collective_time("all_gather", gathered, lay.cp, inter["cp"]) \
                + hw.collective_time("reduce_scatter", gathered, lay.cp, inter["cp"])
        else:
            block = gathered / lay.cp
            hop_f, hop_b = (hw.collective_time("send_recv", b, 2, inter["cp"]) for b in (block, 2 * block))
            per_hop = attn / (lay.cp * (2 + fwd))  # a block's share of forward (backward: twice that)
            one = (lay.cp - 1) * (fwd * max(0.0, hop_f - per_hop) + max(0.0, hop_b - 2 * per_hop))
        parts["cp_comm"] += layers * one
    if lay.pp > 1:
        parts["pp_comm"] += 2 * lay.vpp * hw.collective_time("send_recv", t / sp * d * a, 2, inter["pp"])

    if stage == 0:  # embedding: its gradient lands in a V x d buffer
        parts["memory_bound"] += hw.memory_time(3 * t * d * 4, 4, t * d * 4)
        if lay.tp > 1:
            kind = "reduce_scatter" if lay.sequence_parallel else "all_reduce"
            parts["tp_comm"] += 2 * hw.collective_time(kind, msg, lay.tp, inter["tp"])
    if stage == lay.pp - 1:
        vocab = shape.vocab_size / lay.tp
        pieces_recomputed = 2 if t > LOSS_CHUNK_TOKENS else 1
        parts["gemm"] += _linear(hw, t, d, vocab, pieces_recomputed)
        parts["memory_bound"] += hw.memory_time(t * 4 * vocab * 5 + t * 16 * d, 12, t * 4 * vocab)
        if lay.tp > 1:
            kind = "all_gather" if lay.sequence_parallel else "all_reduce"
            parts["tp_comm"] += 2 * hw.collective_time(kind, msg, lay.tp, inter["tp"]) \
                + 3 * hw.collective_time("all_reduce", t * 4, lay.tp, inter["tp"])
    return parts


def step_time(shape: Shape, lay: Layout, hw) -> StepTime:
    """Seconds of one optimizer step on the busiest rank, by part (PARTS)."""
    inter = _groups_inter_node(lay, hw.processes_per_node)
    stages = [_stage_microbatch(shape, lay, hw, s, inter) for s in sorted({0, lay.pp - 1})]
    slowest = max(stages, key=lambda p: sum(p.values()))
    shared = hw.node_slowdown if min(lay.world, hw.processes_per_node) > 1 else 1.0  # CPU cores share a node
    for k in ("gemm", "attention", "memory_bound"):
        slowest[k] *= shared
    m = lay.microbatches
    parts = {k: m * v for k, v in slowest.items()}
    parts["bubble"] = (lay.pp - 1) / lay.vpp * sum(slowest.values())

    params = max(stage_params(shape, lay, s) for s in sorted({0, lay.pp - 1}))
    ranks, shard = lay.dp * lay.cp, (lay.dp * lay.cp if lay.distributed_optimizer else 1)
    if lay.distributed_optimizer:
        comm = hw.collective_time("reduce_scatter", 4 * params, ranks, inter["dp"]) \
            + hw.collective_time("all_gather", 4 * params, ranks, inter["dp"])
    else:
        comm = hw.collective_time("all_reduce", 4 * params, ranks, inter["dp"])
    if lay.overlap_grad_reduce and comm > 0:
        backward = 2 / 3 * sum(slowest[k] for k in ("gemm", "attention", "memory_bound"))
        buckets = max(1.0, 4 * params / BUCKET_BYTES)
        comm = max(0.0, comm - backward) + comm / buckets
    if lay.pp > 1 and shape.tie_embeddings:  # the tied embedding's gradient, first and last stage
        comm += hw.collective_time("all_reduce", 4 * shape.vocab_size * shape.hidden_size / lay.tp, 2, inter["pp"])
    parts["dp_comm"] = comm
    tensors = 6 * shape.num_layers / lay.pp + 3
    parts["optimizer"] = shared * hw.memory_time(OPTIMIZER_BYTES * params / shard, int(OPTIMIZER_OPS * tensors),
                                         4 * params / shard / tensors)
    return StepTime(parts)
