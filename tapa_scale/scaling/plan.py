"""Predictions for one layout, and plans: every feasible layout of a cluster, ranked.

`predict` joins the memory and step-time models with the FLOP count into what a run would report:
tokens/s, MFU (causal model FLOPs over the profile's peak, the training loop's convention), memory
per device, whether it fits and what bounds it. `plan` enumerates tp x pp x vpp x cp x dp x micro
batch x sequence parallelism x optimizer sharding for a world of devices and ranks them.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from types import SimpleNamespace

from .flops import model_flops
from .layout import Layout, Shape
from .memory import Memory, memory
from .steptime import StepTime, step_time


@dataclass
class Prediction:
    layout: Layout
    memory: Memory
    time: StepTime
    tokens_per_s: float
    mfu: float
    mfu_noncausal: float = 0.0  # attention counted over the full square (torchtitan's, llm-foundry's)

    @property
    def bottleneck(self) -> str:
        return "memory (does not fit)" if not self.memory.fits else self.time.bottleneck

    def to_json(self) -> dict:
        lay = self.layout
        return {"layout": lay.describe(), "tp": lay.tp, "pp": lay.pp, "vpp": lay.vpp, "cp": lay.cp,
                "cp_comm": lay.cp_comm, "dp": lay.dp, "sequence_parallel": lay.sequence_parallel,
                "micro_batch": lay.micro_batch, "global_batch": lay.global_batch,
                "distributed_optimizer": lay.distributed_optimizer, "recompute": lay.recompute,
                "tokens_per_s": round(self.tokens_per_s, 1), "tokens_per_s_per_device": round(self.tokens_per_s / lay.world, 1),
                "mfu": round(self.mfu, 4), "mfu_noncausal": round(self.mfu_noncausal, 4), "memory_gb": round(self.memory.total / 1e9, 3), "fits": self.memory.fits,
                "bottleneck": self.bottleneck, "step_time_s": round(self.time.total, 6),
                "time_s": {k: round(v, 6) for k, v in self.time.parts.items()}, "memory": self.memory.to_json()}


def train_flops_per_token(shape: Shape, causal: bool = True) -> float:
    """Model FLOPs of one training token (scaling/flops.py)."""
    m = SimpleNamespace(hidden_size=shape.hidden_size, num_heads=shape.num_heads, kv_heads=shape.kv_heads,
                        head_dim=shape.head_dim, num_layers=shape.num_layers, ffn_size=shape.ffn_size,
                        pos_encoding=shape.encoding, tapa=SimpleNamespace(theta=shape.tapa_theta, phase=shape.tapa_phase))
    return model_flops(m, shape.seq_len, shape.vocab_size, causal=causal).train


def predict(shape: Shape, lay: Layout, hw) -> Prediction:
    problems = lay.problems(shape)
    if problems:
        raise ValueError(f"layout {lay.describe()}: " + "; ".join(problems))
    t = step_time(shape, lay, hw)
    tokens_per_s = lay.global_batch * shape.seq_len / t.total
    per_device = tokens_per_s / lay.world / hw.peak_flops
    return Prediction(layout=lay, memory=memory(shape, lay, hw), time=t, tokens_per_s=tokens_per_s,
                      mfu=train_flops_per_token(shape) * per_device,
                      mfu_noncausal=train_flops_per_token(shape, causal=False) * per_device)


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def layouts(shape: Shape, world: int, global_batch: int, *, per_node: int, micro_batches=(1, 2, 4),
            max_vpp: int = 4, cp_comms=("allgather", "ring"), recompute=("none",),
            sharded_optimizer=(False, True)) -> list[Layout]:
    """Every runnable layout of ``world`` devices for the shape (tensor parallelism within a node)."""
    out = []
    for tp, cp, pp in product(_divisors(world), repeat=3):
        if tp > per_node or world % (tp * cp * pp):
            continue
        dp = world // (tp * cp * pp)
        for vpp, mb, sp, zero, comm, rc in product(range(1, max_vpp + 1), micro_batches, (False, True),
                                                   sharded_optimizer, cp_comms if cp > 1 else ("allgather",), recompute):
            if (sp and tp == 1) or (zero and dp * cp == 1) or (vpp > 1 and pp == 1):
                continue  # sharding needs more than one rank to shard over
            lay = Layout(tp=tp, pp=pp, cp=cp, dp=dp, vpp=vpp, sequence_parallel=sp, cp_comm=comm, micro_batch=mb,
                         global_batch=global_batch, distributed_optimizer=zero, recompute=rc)
            if not lay.problems(shape):
                out.append(lay)
    return out


def plan(shape: Shape, hw, *, nodes: int, gpus_per_node: int, global_batch: int, **kwargs) -> list[Prediction]:
    """Predictions for every runnable layout, those that fit first, then by tokens/s."""
    per_node = gpus_per_node or hw.processes_per_node
    hw.processes_per_node = per_node
    preds = [predict(shape, lay, hw) for lay in layouts(shape, nodes * per_node, global_batch, per_node=per_node, **kwargs)]
    return sorted(preds, key=lambda p: (not p.memory.fits, -p.tokens_per_s, p.memory.total))
