"""What the cost model knows about a machine: a hardware profile, read from JSON.

A profile is what the cost model multiplies by. It holds the device's peak, memory and bandwidth
from a datasheet, and where it was measured (``calibrated: true``, written by
`tapa_scale.scaling.calibrate`) also operator timings taken on it:

    name, calibrated, source, device ("cpu" | "cuda"), compute_dtype ("fp32" | "bf16")
    peak_flops              dense matmul peak in the compute dtype, FLOP/s (the MFU denominator)
    memory_bytes            device memory (HBM; on CPU the RAM one process may use)
    runtime_bytes           memory a training process holds before its first tensor (CUDA context and
                            communicator buffers; on CPU the resident set of the imported runtime)
    memory_bandwidth        bytes/s an elementwise kernel sustains
    memory_table            [[tensor_bytes, bytes_per_s], ...]: measured bandwidth of an elementwise
                            operator that allocates its output, by the size of one tensor (optional;
                            on CPU a large fresh output is paid in page faults, far below streaming)
    op_overhead_s           fixed cost of one operator (kernel launch, or eager dispatch on CPU)
    processes_per_node      devices (GPUs, or CPU processes) sharing the intra-node links
    node_slowdown           compute seconds of a process while the node's other processes compute too,
                            over its seconds alone (CPU cores share caches and memory; 1 on GPUs)
    host_mix_s              seconds of a fixed operator mix at calibration (CPU; 0 = not measured): the
                            host's speed then, to read a later measurement against
    gemm.efficiency         achieved fraction of peak_flops for shapes outside the table
    gemm.table              [[m, n, k, flop_per_s], ...]: measured C[m,n] = A[m,k] @ B[k,n]
    attention.<impl>/<family>
                            {head_dim, points: [[seq_len, batch_heads, seconds_per_pair], ...]}: measured
                            forward + backward of causal attention at each length and batch x heads,
                            divided by its batch x heads x (query, key) pairs; family "tapa" or "dot"
                            (the RoPE family, NoPE, ALiBi). The cost per pair depends on batch x heads
                            too: a kernel's grid is batch x heads x query blocks (few of them leave a
                            GPU idle), and on CPU the score block outgrows the caches
    links.intra / links.inter
                            {<collective>: {latency_s, bandwidth}} for all_reduce, all_gather,
                            reduce_scatter and send_recv; bandwidth is the bus bandwidth of a ring
                            (the size moved per rank over the time, as nccl-tests report it)

Shipped profiles (profiles/*.json) come from public specifications and are marked uncalibrated: their
GEMM and attention terms are one assumed efficiency, which is the ±30% kind of model. Calibrating on
the machine replaces them by measurements (docs/scaling.md, "Calibrating your cluster").
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

PROFILES = Path(__file__).parent / "profiles"
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "send_recv")


class ProfileError(ValueError):
    """A hardware profile that cannot be used, stated in one line."""


@dataclass
class Link:
    latency_s: float
    bandwidth: float  # bus bytes/s


@dataclass
class Hardware:
    name: str
    peak_flops: float
    memory_bytes: float
    memory_bandwidth: float
    calibrated: bool = False
    source: str = ""
    device: str = "cuda"
    compute_dtype: str = "bf16"
    runtime_bytes: float = 0.0
    op_overhead_s: float = 0.0
    processes_per_node: int = 8
    gemm_efficiency: float = 0.7
    gemm_table: list = field(default_factory=list)        # [[m, n, k, flop_per_s], ...]
    attention: dict = field(default_factory=dict)         # "<impl>/<family>" -> {head_dim, points}
    attention_efficiency: float = 0.5                     # fraction of peak where attention has no entry
    memory_table: list = field(default_factory=list)      # [[tensor_bytes, bytes_per_s], ...]
    node_slowdown: float = 1.0                            # compute with the whole node busy / alone
    host_mix_s: float = 0.0                               # contention.mix_seconds at calibration (CPU)
    links: dict = field(default_factory=dict)             # "intra" | "inter" -> {collective: Link}

    @property
    def bytes_per_value(self) -> int:
        return 2 if self.compute_dtype == "bf16" else 4

    # -- operators -------------------------------------------------------------------------------
    def gemm_time(self, m: float, n: float, k: float) -> float:
        """Seconds for C[m,n] = A[m,k] @ B[k,n] (a measured rate includes the operator's fixed cost)."""
        if min(m, n, k) <= 0:
            return 0.0
        flops = 2.0 * m * n * k
        if not self.gemm_table:
            return self.op_overhead_s + flops / (self.peak_flops * self.gemm_efficiency)
        return flops / self.gemm_rate(m, n, k)

    def gemm_rate(self, m: float, n: float, k: float) -> float:
        """Measured FLOP/s of that product: inverse-distance interpolation of the table in log2 space
        (the nearest shapes dominate; exact at a measured shape)."""
        here = (math.log2(m), math.log2(n), math.log2(k))
        weights = total = 0.0
        for tm, tn, tk, rate in self.gemm_table:
            d2 = (here[0] - math.log2(tm)) ** 2 + (here[1] - math.log2(tn)) ** 2 + (here[2] - math.log2(tk)) ** 2
            if d2 < 1e-12:
                return rate
            w = 1.0 / d2 ** 2
            weights += w
            total += w * math.log(rate)
        return math.exp(total / weights)

    def attention_time(self, impl: str, family: str, seq_len: int, pairs: float, head_dim: int,
                       batch_heads: float = 1.0) -> float:
        """Seconds of forward+backward attention over ``pairs`` (batch x heads x (query, key) pairs)
        for queries of ``seq_len`` in ``batch_heads`` (batch x heads) rows, at ``head_dim``: the
        measured cost per pair interpolated in log length at each measured batch x heads, then in log
        batch x heads (held at the ends of both), scaled by the head dim."""
        entry = self.attention.get(f"{impl}/{family}")
        if not entry or not entry.get("points"):  # unmeasured: FLOPs (QK^T and PV, x3 for training) at the assumed efficiency
            return 3 * 4 * pairs * head_dim / (self.peak_flops * self.attention_efficiency)
        rows = {}
        for n, bh, seconds in entry["points"]:
            rows.setdefault(bh, []).append([n, seconds])
        per_pair = _interp_log([[bh, _interp_log(pts, seq_len)] for bh, pts in rows.items()], batch_heads)
        return per_pair * pairs * head_dim / entry["head_dim"]

    def memory_time(self, nbytes: float, ops: int = 0, tensor_bytes: float = 0.0) -> float:
        """Seconds to stream ``nbytes`` through memory in ``ops`` elementwise operators on tensors of
        about ``tensor_bytes`` each (the memory table's bandwidth at that size, interpolated in log
        size and held at the ends; memory_bandwidth without a table or a size)."""
        bandwidth = self.memory_bandwidth
        if self.memory_table and tensor_bytes > 0:
            bandwidth = _interp_log(self.memory_table, tensor_bytes)
        return nbytes / bandwidth + ops * self.op_overhead_s

    def collective_time(self, kind: str, nbytes: float, ranks: int, inter_node: bool = False) -> float:
        """Seconds of one ring collective over ``ranks`` on the tensor of ``nbytes`` each rank holds
        (all_gather: the gathered output; reduce_scatter: the input; send_recv: the message)."""
        if ranks <= 1 or nbytes <= 0:
            return 0.0
        link = self.link(kind, inter_node)
        if kind == "send_recv":
            return link.latency_s + nbytes / link.bandwidth
        steps = 2 * (ranks - 1) if kind == "all_reduce" else ranks - 1
        return steps * link.latency_s + steps / ranks * nbytes / link.bandwidth

    def link(self, kind: str, inter_node: bool) -> Link:
        level = "inter" if inter_node and "inter" in self.links else "intra"
        try:
            return self.links[level][kind]
        except KeyError:
            raise ProfileError(f"hardware profile {self.name!r}: links.{level}.{kind} is missing "
                               f"(expected {{latency_s, bandwidth}})") from None

    # -- files -----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in REQUIRED + PLAIN}
        out["gemm"] = {"efficiency": self.gemm_efficiency, "table": self.gemm_table}
        out["attention"] = self.attention
        out["links"] = {level: {kind: vars(link) for kind, link in kinds.items()} for level, kinds in self.links.items()}
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")


def _interp_log(points: list, x: float) -> float:
    """Piecewise-linear interpolation of [[x, y], ...] in log x, constant beyond the ends."""
    pts = sorted(points)
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1:
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return pts[-1][1]


REQUIRED = ("name", "peak_flops", "memory_bytes", "memory_bandwidth")
PLAIN = ("calibrated", "source", "device", "compute_dtype", "runtime_bytes", "op_overhead_s",  # as stored
         "processes_per_node", "attention_efficiency", "memory_table", "node_slowdown", "host_mix_s")


def from_json(data: dict, where: str = "profile") -> Hardware:
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ProfileError(f"{where}: missing key(s) {', '.join(missing)} (expected {', '.join(REQUIRED)})")
    for key in ("peak_flops", "memory_bytes", "memory_bandwidth"):
        if not (isinstance(data[key], (int, float)) and data[key] > 0):
            raise ProfileError(f"{where}: {key}={data[key]!r}: expected a positive number")
    links = {}
    for level, kinds in data.get("links", {}).items():
        links[level] = {}
        for kind, link in kinds.items():
            if kind not in COLLECTIVES or not {"latency_s", "bandwidth"} <= set(link) or link["bandwidth"] <= 0:
                raise ProfileError(f"{where}: links.{level}.{kind}={link!r}: expected one of {COLLECTIVES} "
                                   f"with latency_s >= 0 and bandwidth > 0")
            links[level][kind] = Link(float(link["latency_s"]), float(link["bandwidth"]))
    gemm = data.get("gemm", {})
    return Hardware(name=data["name"], peak_flops=float(data["peak_flops"]), memory_bytes=float(data["memory_bytes"]),
                    memory_bandwidth=float(data["memory_bandwidth"]),
                    gemm_efficiency=float(gemm.get("efficiency", 0.7)), gemm_table=list(gemm.get("table", [])),
                    attention=dict(data.get("attention", {})), links=links,
                    **{k: data[k] for k in PLAIN if k in data})


def shipped() -> list[str]:
    """Names of the profiles that come with the package."""
    return sorted(p.stem for p in PROFILES.glob("*.json"))


def load_hardware(name_or_path: str) -> Hardware:
    """A shipped profile by name (e.g. "h100_sxm") or a profile JSON file."""
    path = Path(name_or_path)
    if not path.suffix == ".json":
        path = PROFILES / f"{name_or_path}.json"
        if not path.exists():
            raise ProfileError(f"hardware {name_or_path!r}: not a shipped profile ({', '.join(shipped())}) "
                               f"nor a .json file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ProfileError(f"hardware profile {path}: cannot read it as JSON ({e})") from None
    return from_json(data, str(path))
