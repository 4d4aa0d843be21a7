"""Process groups, created once from the `parallel` config and handed to builders as one object.

Under torchrun / deepspeed / srun the rendezvous comes from the environment (WORLD_SIZE, RANK,
MASTER_ADDR, MASTER_PORT, LOCAL_RANK: torchrun and the deepspeed launcher both set these); a plain
`python -m tapa_scale.train` is a world of one, initialised on an in-memory store (no port).
megatron-core's model-parallel groups are built on top with its default rank order tp-cp-dp-pp:
tensor-parallel ranks are neighbours (same node), pipeline stages are furthest apart.

Restarts (`torchrun --max-restarts`): torchrun's static rendezvous keeps one key-value store for all
attempts and hands the workers that store without an attempt prefix, so a restarted attempt would read
the crashed attempt's gloo/NCCL addresses and fail to connect. Under torchrun every attempt therefore
initialises on its own prefix of the agent's store (`attempt_<TORCHELASTIC_RESTART_COUNT>/`) when
the job has one node: the count is kept by each node's agent, and with several nodes the agents may
count differently (a restart for a membership change is not counted), so multi-node jobs keep torch's
own rendezvous.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from .config import ParallelConfig


@dataclass
class Groups:
    """Who this process is in each parallel dimension (sizes and ranks; groups via `cp_group` etc.)."""
    rank: int
    world_size: int
    local_rank: int
    tp: int
    pp: int
    cp: int
    dp_rank: int
    dp_size: int
    device: torch.device
    tp_rank: int = 0
    pp_rank: int = 0
    cp_rank: int = 0
    vpp: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cp_group(self) -> Optional[dist.ProcessGroup]:
        from megatron.core import parallel_state as mpu
        return mpu.get_context_parallel_group()

    @property
    def model_parallel_group(self) -> Optional[dist.ProcessGroup]:
        """Tensor x pipeline ranks that hold different parts of one model replica."""
        from megatron.core import parallel_state as mpu
        return mpu.get_model_parallel_group()


def wants_cuda(device: str) -> bool:
    """Whether train.device (auto | cpu | cuda) runs on a GPU here."""
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


_enabled_compat: list = []  # non-empty while the CPU patches are on because init_groups switched them on


def init_groups(cfg: ParallelConfig, device: str = "auto", timeout_s: int = 600) -> Groups:
    """Initialise torch.distributed and megatron's model-parallel state; returns this rank's Groups.

    On CPU the megatron-core compatibility patches (parallel/cpu_compat.py) are switched on here, for
    as long as the groups live (destroy_groups switches them off): megatron's schedules and DDP allocate
    small CUDA tensors even in a world of one. On CUDA nothing is patched; an untested megatron-core
    version is warned about once."""
    from megatron.core import parallel_state as mpu

    use_cuda = wants_cuda(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    from . import cpu_compat
    if use_cuda:
        torch.cuda.set_device(dev)
        cpu_compat.check_version()
    elif not cpu_compat.is_enabled():
        cpu_compat.enable()
        _enabled_compat.append(True)
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_cuda else "gloo")
    if not dist.is_initialized():
        if "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **_attempt_store(timeout_s))
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timedelta(seconds=timeout_s))
    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(tensor_model_parallel_size=cfg.tp, pipeline_model_parallel_size=cfg.pp,
                                      virtual_pipeline_model_parallel_size=cfg.vpp if cfg.vpp > 1 else None,
                                      context_parallel_size=cfg.cp,
                                      distributed_timeout_minutes=max(1, timeout_s // 60))
    return Groups(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                  tp=cfg.tp, pp=cfg.pp, cp=cfg.cp, dp_rank=mpu.get_data_parallel_rank(),
                  dp_size=mpu.get_data_parallel_world_size(), device=dev,
                  tp_rank=mpu.get_tensor_model_parallel_rank(), pp_rank=mpu.get_pipeline_model_parallel_rank(),
                  cp_rank=mpu.get_context_parallel_rank(), vpp=cfg.vpp)


def _attempt_store(timeout_s: int) -> dict:
    """Under torchrun's agent store on one node: this attempt's prefix of it (with rank and world size);
    else {} (the env:// rendezvous as usual)."""
    env = os.environ
    if (env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "TORCHELASTIC_RESTART_COUNT" not in env
            or env.get("LOCAL_WORLD_SIZE") != env.get("WORLD_SIZE")):  # one node: one agent counts attempts
        return {}
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), int(env["WORLD_SIZE"]), is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    return {"store": dist.PrefixStore(f"attempt_{env['TORCHELASTIC_RESTART_COUNT']}/", store),
            "rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"])}


def destroy_groups() -> None:
    """Tear down megatron's model-parallel state and torch.distributed, and the CPU patches that
    init_groups switched on."""
    from megatron.core import parallel_state as mpu

    from . import cpu_compat

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    if _enabled_compat:
        _enabled_compat.clear()
        cpu_compat.disable()
