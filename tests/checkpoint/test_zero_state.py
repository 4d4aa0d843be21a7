"""Checkpoints of megatron's distributed optimizer beyond resume (test_exact_resume.py, test_reshard.py):
the flat-slice geometry, the Hugging Face export and what inspect_checkpoint reports.

Would catch: a flat range cut into boxes that miss, repeat or reorder elements (a moment written at the
wrong place of its parameter); a distributed-optimizer checkpoint whose weights do not export, or export
other weights than the unsharded optimizer's run of the same layout; state reported as written by one
rank when every data-parallel rank wrote its share (or the reverse)."""
import random

import pytest
import torch

from tapa_scale.train import checkpoint as ckpt
from tapa_scale.train.zero_state import flat_boxes
from tests.checkpoint.test_inspect import inspect_json


def test_flat_boxes_cover_exactly_the_range_in_memory_order():
    rng = random.Random(0)
    shapes = [(7,), (3, 5), (4, 3, 6), (2, 1, 4, 3), (1, 9)]
    for shape in shapes:
        whole = torch.arange(torch.Size(shape).numel()).view(shape)
        n = whole.numel()
        ranges = [(0, n), (0, 1), (n - 1, n)] + [sorted(rng.sample(range(n + 1), 2)) for _ in range(40)]
        for start, end in ranges:
            boxes = flat_boxes(start, end, shape)
            seen = []
            for offset, size in boxes:
                assert len(offset) == len(size) == len(shape)
                block = whole[tuple(slice(o, o + s) for o, s in zip(offset, size))]
                values = block.reshape(-1)
                assert torch.equal(values, torch.arange(values[0], values[0] + values.numel())), (shape, offset, size)
                seen.append(values)
            got = torch.cat(seen) if seen else torch.empty(0, dtype=torch.long)
            assert torch.equal(got, torch.arange(start, end)), (shape, start, end, boxes)
            assert len(boxes) <= 2 * len(shape) - 1


@pytest.mark.parametrize("sharded,plain", [("dp2-zero", "dp2"), ("dp2-tp2-zero", "tp2")])
def test_distributed_optimizer_checkpoints_export_the_unsharded_runs_model(tmp_path, uninterrupted, sharded, plain):
    """The same samples in the same model-parallel layout, AdamW state sharded or not: the HF exports of
    both final checkpoints give the same logits in transformers (within the float rounding of 8 steps)."""
    from transformers import AutoModelForCausalLM

    from tapa_scale.hf.export import export_to_hf

    ids = torch.randint(0, 8192, (2, 32), generator=torch.Generator().manual_seed(0))
    logits = []
    for layout in (sharded, plain):
        out = export_to_hf(uninterrupted(layout), tmp_path / layout)
        model = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(model(ids).logits.float())
    x, y = logits
    assert ((x - y).abs().max() / y.abs().max()).item() <= 1e-4


def test_inspect_reports_each_ranks_share_of_the_optimizer_state(uninterrupted):
    zero = inspect_json(ckpt.latest_checkpoint(uninterrupted("dp2-zero")))["optimizer_state"]
    plain = inspect_json(ckpt.latest_checkpoint(uninterrupted("dp2")))["optimizer_state"]
    assert (zero["optimizer"], zero["sharded_over"]) == ("distributed", 2)
    assert (plain["optimizer"], plain["sharded_over"]) == ("torch", 1)
    assert list(plain["bytes_per_rank"]) == ["0"]  # the main replica of every unsharded moment is rank 0
    assert list(zero["bytes_per_rank"]) == ["0", "1"]
    # the same global tensors, each element written once (serialisation adds a few hundred bytes per box)
    assert zero["total_bytes"] == pytest.approx(plain["total_bytes"], rel=0.01)
    for share in zero["bytes_per_rank"].values():
        assert share == pytest.approx(zero["total_bytes"] / 2, rel=0.05)
