"""A parallel layout as the cost model sees it, and the shape of the model it runs.

`Layout` holds what decides cost (tp, pp, vpp, cp and its exchange, dp, the batch, the optimizer's
sharding, recomputation, overlap); `Shape` the sizes of the model and sequence. Both are plain
numbers: `layout_of` and `shape_of` read them from a training config, nothing is built.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1
    vpp: int = 1
    sequence_parallel: bool = False
    cp_comm: str = "allgather"
    micro_batch: int = 1
    global_batch: int = 1                 # sequences per optimizer step
    distributed_optimizer: bool = False   # AdamW state sharded over data x context ranks
    recompute: str = "none"               # none | selective (the core attention rebuilt) | full (every layer)
    overlap_grad_reduce: bool = False     # gradient reduction overlapped with backward

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def microbatches(self) -> int:
        """Micro-batches per optimizer step on each data-parallel rank."""
        return self.global_batch // (self.micro_batch * self.dp)

    def problems(self, shape: "Shape") -> list[str]:
        """What makes this layout impossible for the shape (one line each; empty = runnable)."""
        errs = []
        if shape.num_heads % self.tp or shape.kv_heads % self.tp:
            errs.append(f"tp={self.tp} must divide the {shape.num_heads} query and {shape.kv_heads} key/value heads")
        if shape.num_layers % (self.pp * self.vpp):
            errs.append(f"pp={self.pp} x vpp={self.vpp} must divide the {shape.num_layers} layers")
        if self.vpp > 1 and (self.pp == 1 or self.microbatches % self.pp):
            errs.append(f"vpp={self.vpp} needs pp > 1 and a multiple of pp micro-batches per step")
        if self.cp > 1 and shape.seq_len % (2 * self.cp):
            errs.append(f"cp={self.cp}: the sequence length {shape.seq_len} must be divisible by 2 x cp")
        if self.sequence_parallel and self.tp == 1:
            errs.append("sequence_parallel needs tp > 1")
        if self.global_batch % (self.micro_batch * self.dp) or self.microbatches < 1:
            errs.append(f"global batch {self.global_batch} must be a multiple of micro batch {self.micro_batch} "
                        f"x dp {self.dp}")
        if shape.vocab_size % self.tp:
            errs.append(f"tp={self.tp} must divide the vocabulary {shape.vocab_size}")
        if self.recompute not in RECOMPUTE:
            errs.append(f"recompute={self.recompute!r}: expected one of {RECOMPUTE}")
        return errs

    def describe(self) -> str:
        parts = [f"tp{self.tp}", f"pp{self.pp}"] + ([f"vpp{self.vpp}"] if self.vpp > 1 else [])
        parts += [f"cp{self.cp}" + ("ring" if self.cp > 1 and self.cp_comm == "ring" else ""), f"dp{self.dp}"]
        parts += (["sp"] if self.sequence_parallel else []) + (["zero1"] if self.distributed_optimizer else [])
        parts += ([f"recompute={self.recompute}"] if self.recompute != "none" else [])
        return "-".join(parts) + f"-mb{self.micro_batch}"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Shape:
    num_layers: int
    hidden_size: int
    num_heads: int
    kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    seq_len: int
    tie_embeddings: bool = True
    encoding: str = "tapa"        # positional encoding (the attention family)
    attention_impl: str = "auto"  # auto | reference | triton (resolved per device by the cost model)
    tapa_theta: float = 0.5
    tapa_phase: str = "quadratic"

    @property
    def family(self) -> str:
        """The attention family whose cost applies: "tapa", or "dot" for every dot-product score."""
        return "tapa" if self.encoding == "tapa" else "dot"

    def layer_params(self) -> tuple[int, int]:
        """(parameters split over tensor-parallel ranks, parameters every rank holds) of one layer."""
        d, q, kv, f = self.hidden_size, self.num_heads * self.head_dim, self.kv_heads * self.head_dim, self.ffn_size
        return d * (q + 2 * kv) + q * d + 3 * d * f, 2 * d


def shape_of(model, seq_len: int, vocab_size: int) -> Shape:
    """The Shape of a ModelConfig at a sequence length (vocab_size: model.vocab_size or the tokenizer's)."""
    return Shape(num_layers=model.num_layers, hidden_size=model.hidden_size, num_heads=model.num_heads,
                 kv_heads=model.kv_heads, head_dim=model.head_dim, ffn_size=model.ffn_size,
                 vocab_size=model.vocab_size or vocab_size, seq_len=seq_len, tie_embeddings=model.tie_embeddings,
                 encoding=model.pos_encoding, attention_impl=model.attention_impl,
                 tapa_theta=model.tapa.theta, tapa_phase=model.tapa.phase)


def layout_of(cfg, world_size: int) -> Layout:
    """The Layout a training config (tapa_scale.config.Config) runs with on ``world_size`` processes."""
    p, t = cfg.parallel, cfg.train
    dp = max(1, world_size // (p.tp * p.pp * p.cp))
    return Layout(tp=p.tp, pp=p.pp, cp=p.cp, dp=dp, vpp=p.vpp, sequence_parallel=p.sequence_parallel,
                  cp_comm=p.cp_comm, micro_batch=t.micro_batch_size,
                  global_batch=t.global_batch_size or t.micro_batch_size * dp,
                  distributed_optimizer=p.distributed_optimizer,
                  recompute=getattr(p, "recompute", "none"),
                  overlap_grad_reduce=getattr(p, "overlap_grad_reduce", False))
