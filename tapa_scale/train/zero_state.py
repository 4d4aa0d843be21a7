"""The distributed optimizer's AdamW moments in the checkpoint's one format.

megatron's distributed optimizer keeps, on each rank of the data x context group, the moments of one
contiguous slice of every gradient bucket; for a parameter that is the elements [start, end) of its
flattened (tensor-parallel local) tensor. The checkpoint stores moments as the torch AdamW path does:
one global tensor per parameter, `optim.<moment>.<parameter key>`, shaped and offset like the parameter
(sharded.py). Here each rank writes only its own slice of that tensor, cut into the few rectangular
boxes that a flat range of a row-major tensor is made of (dist_checkpointing's uneven sharding: boxes
without a regular grid, validated by torch.distributed.checkpoint), and on load reads the boxes of the
slice it owns now. Nothing is gathered, no rank holds more than its own shard at any time, and since
the global tensors are those of the unsharded format, one checkpoint reshards across TP, PP, DP and CP
and loads with either optimizer.

A parameter's model ShardedTensor may be a factory (the SwiGLU [gate; up] weight is two global row
blocks): the factory is built on a probe tensor once to learn which rows of the local tensor go where.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterator

import torch

MOMENTS = ("exp_avg", "exp_avg_sq")


def flat_boxes(start: int, end: int, shape: tuple) -> list[tuple[tuple, tuple]]:
    """(offset, size) of the boxes whose union is elements [start, end) of a row-major tensor of `shape`,
    in memory order; every box is contiguous in memory (partial rows stay one row high)."""
    if start >= end:
        return []
    if len(shape) <= 1:
        return [((start,), (end - start,))] if shape else [((), ())]
    inner = math.prod(shape[1:])
    row, boxes = start // inner, []
    if start % inner:  # the end of a partly covered first row
        stop = min(end, (row + 1) * inner)
        boxes += [((row, *o), (1, *s)) for o, s in flat_boxes(start - row * inner, stop - row * inner, shape[1:])]
        start, row = stop, row + 1
    full = (end - start) // inner
    if full > 0:
        boxes.append(((row,) + (0,) * (len(shape) - 1), (full, *shape[1:])))
        start, row = start + full * inner, row + full
    if start < end:  # the start of a partly covered last row
        boxes += [((row, *o), (1, *s)) for o, s in flat_boxes(0, end - start, shape[1:])]
    return boxes


def distributed_optimizers(optimizer) -> list:
    """megatron's DistributedOptimizer(s) behind `optimizer` (a ChainedOptimizer holds several)."""
    return list(getattr(optimizer, "chained_optimizers", None) or [optimizer])


def is_distributed(optimizer) -> bool:
    return all(hasattr(o, "shard_fp32_groups") for o in distributed_optimizers(optimizer))


def slices(optimizer) -> Iterator[tuple]:
    """(model parameter, start, end, shard parameter, its AdamW state) for every parameter slice this
    rank's distributed optimizer owns: the shard holds elements [start, end) of the flattened parameter."""
    for opt in distributed_optimizers(optimizer):
        if any(group for group in opt.model_float16_groups):
            raise TypeError("distributed optimizer over float16 parameters: their fp32 main copies are not "
                            "checkpointed (this trainer keeps its parameters in float32)")
        for models, shards in zip(opt.model_fp32_groups, opt.shard_fp32_groups):
            for param, shard in zip(models, shards):
                rng = opt._get_model_param_range_map(param)["param"]
                yield param, rng.start, rng.end, shard, opt.optimizer.state[shard]


def _pieces(model_sh) -> list[tuple[int, object]]:
    """(first flat element in the local tensor, ShardedTensor without data) of each global block the
    local parameter is stored as: one for a plain ShardedTensor, those its factory builds otherwise."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
    from megatron.core.dist_checkpointing.dict_utils import nested_values

    if not isinstance(model_sh, ShardedTensorFactory):
        return [(0, model_sh.without_data())]
    probe = torch.empty(model_sh.data.shape, dtype=torch.float32)
    out = []
    for piece in nested_values(replace(model_sh, data=probe).build()):
        view = piece.data
        if view.untyped_storage().data_ptr() != probe.untyped_storage().data_ptr() or not view.is_contiguous():
            raise TypeError(f"{model_sh.key}: a sharded-tensor factory whose blocks are not contiguous rows "
                            f"of the local tensor cannot hold distributed-optimizer slices")
        out.append((view.storage_offset(), piece.without_data()))
    return out


def _main_for_slice(replica_id, key: str):
    """A parameter is replicated over the data x context ranks (the last entry of megatron's replica id);
    its optimizer slices exist once there, so each is a main replica there."""
    if not isinstance(replica_id, tuple) or not replica_id:
        raise TypeError(f"{key}: unexpected replica id {replica_id!r} (a tuple ending with the data-parallel rank)")
    return (*replica_id[:-1], 0)


def sharded_moments(optimizer, model_sharded: dict, *, create: bool) -> dict:
    """ShardedTensors of this rank's moment slices, keyed like sharded.optimizer_sharded_state_dict's
    global tensors (`optim.<moment>.<parameter key>`). create=True makes zero moments first (a load)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    by_param = {id(sh.data): sh for sh in model_sharded.values()}
    out = {}
    for i, (param, start, end, shard, state) in enumerate(slices(optimizer)):
        if id(param) not in by_param:
            raise KeyError(f"distributed optimizer parameter {i} {tuple(param.shape)} is not in the model's "
                           f"sharded state dict")
        if create and not state:
            state.update({m: torch.zeros_like(shard) for m in MOMENTS})
        for m in MOMENTS:
            if m not in state:
                raise KeyError(f"optimizer state of parameter {i} has no {m}; save after the first step")
        model_sh = by_param[id(param)]
        for first, piece in _pieces(model_sh):
            lo, hi = max(start, first), min(end, first + math.prod(piece.local_shape))
            p = piece.prepend_axis_num
            for b, (offset, size) in enumerate(flat_boxes(lo - first, hi - first, piece.local_shape)):
                at = first - start + sum(o * math.prod(piece.local_shape[d + 1:]) for d, o in enumerate(offset))
                global_offset = (*piece.global_offset[:p], *(g + o for g, o in zip(piece.global_offset[p:], offset)))
                shape = (1,) * p + tuple(size)  # uneven shards spell out the prepended (layer) axes
                for m in MOMENTS:
                    data = state[m][at:at + math.prod(size)].view(shape)
                    out[f"optim.{m}.{piece.key}.{i}.{first}.{b}"] = ShardedTensor(
                        key=f"optim.{m}.{piece.key}", data=data, dtype=data.dtype, local_shape=shape,
                        global_shape=piece.global_shape, global_offset=global_offset, axis_fragmentations=None,
                        replica_id=_main_for_slice(model_sh.replica_id, model_sh.key))
    return out


def load_moments(optimizer, requested: dict, loaded: dict, step_count: int) -> None:
    """Copy what dist_checkpointing read for `requested` (sharded_moments(create=True)) into the
    optimizer's state, and set every slice's AdamW step count."""
    for name, sh in requested.items():
        if loaded[name] is not sh.data:
            sh.data.copy_(loaded[name])
    for *_, state in slices(optimizer):
        state["step"] = torch.tensor(float(step_count), dtype=torch.float32)


def step_count(optimizer) -> int:
    """The AdamW step count of every slice (one: they are stepped together)."""
    steps = {int(state["step"]) for *_, state in slices(optimizer) if "step" in state}
    if len(steps) > 1:
        raise ValueError(f"distributed optimizer slices have different step counts {sorted(steps)}")
    return steps.pop() if steps else 0
