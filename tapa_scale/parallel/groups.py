"""Process groups, created once from the `parallel` config and handed to builders as one object.

Under torchrun / deepspeed / srun the rendezvous comes from the environment (WORLD_SIZE, RANK, ...);
a plain `python -m tapa_scale.train` is a world of one, initialised on an in-memory store (no port).
megatron-core's model-parallel groups (tensor, pipeline, context, data) are built on top.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import ParallelConfig


@dataclass
class Groups:
    """Who this process is in each parallel dimension."""
    rank: int
    world_size: int
    local_rank: int
    tp: int
    pp: int
    cp: int
    dp_rank: int
    dp_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_groups(cfg: ParallelConfig, device: str = "auto", timeout_s: int = 600) -> Groups:
    """Initialise torch.distributed and megatron's model-parallel state; returns this rank's Groups."""
    from megatron.core import parallel_state as mpu

    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_cuda else "gloo")
    if not dist.is_initialized():
        if "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timedelta(seconds=timeout_s))
    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(tensor_model_parallel_size=cfg.tp, pipeline_model_parallel_size=cfg.pp,
                                      context_parallel_size=cfg.cp)
    return Groups(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                  tp=cfg.tp, pp=cfg.pp, cp=cfg.cp, dp_rank=mpu.get_data_parallel_rank(),
                  dp_size=mpu.get_data_parallel_world_size(), device=dev)


def destroy_groups() -> None:
    from megatron.core import parallel_state as mpu

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
