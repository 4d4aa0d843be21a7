"""Run under torchrun (gloo) by test_distributed.py: each rank loads its shard of the batches.

    torchrun --nproc_per_node N dist_loader_script.py DATASET OUT.json BATCHES MICRO [STATE.json]

Phase 1 takes BATCHES micro batches per rank (resuming from STATE.json if given) and saves the
loader state; phase 2 builds a fresh loader, loads that state and takes BATCHES more. Rank 0
writes {"phase1": {global index: tokens}, "phase2": ..., "state": ...} to OUT.json.
"""
import itertools
import json
import sys

import torch.distributed as dist

from tapa_scale.data import DataConfig, build_loader


def run(cfg, micro, rank, world, n, state):
    loader = build_loader(cfg, "train", micro, dp_rank=rank, dp_size=world)
    if state is not None:
        loader.load_state_dict(state)
    start, rows = loader.samples_seen, {}
    for j, batch in enumerate(itertools.islice(loader, n)):
        for i, row in enumerate(batch["input_ids"].tolist()):
            rows[start + j * micro * world + i * world + rank] = row
    return rows, loader.state_dict()


def main():
    root, out, n, micro = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    state = json.loads(open(sys.argv[5]).read()) if len(sys.argv) > 5 else None
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = DataConfig(path=root, seq_len=24)
    result = {}
    for phase in ("phase1", "phase2"):
        rows, state = run(cfg, micro, rank, world, n, state)
        gathered = [None] * world
        dist.all_gather_object(gathered, {"rows": rows, "state": state})
        merged = {}
        for part in gathered:
            assert part["state"] == gathered[0]["state"], "ranks disagree on the loader state"
            overlap = set(merged) & set(part["rows"])
            assert not overlap, f"global samples {sorted(overlap)} on two ranks"
            merged.update(part["rows"])
        result[phase] = merged
        result["state"] = state
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.barrier()  # no rank tears down gloo while another still finishes (abort at exit)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
