"""Data-parallel sharding and exact resume, in one process (torchrun versions: test_distributed)."""
import itertools
import json

import pytest

from tapa_scale.data import DataConfig, DataError, build_loader

SEQ = 24


def _cfg(root, **kw):
    return DataConfig(path=str(root), seq_len=SEQ, **kw)


def reference(root, n, seed=0):
    """The first n global samples, from one process (D=1, B=1): the order every layout must match."""
    loader = build_loader(_cfg(root), "train", 1, seed=seed)
    return [b["input_ids"][0].tolist() for b in itertools.islice(loader, n)]


def take(loaders, n_batches):
    """n_batches from each rank's loader; returns samples placed at their global index."""
    out = {}
    for loader in loaders:
        start = loader.samples_seen
        for j, batch in enumerate(itertools.islice(loader, n_batches)):
            for i, row in enumerate(batch["input_ids"].tolist()):
                g = start + j * loader.global_batch + i * loader.dp_size + loader.dp_rank
                assert g not in out, f"global sample {g} delivered twice"
                out[g] = row
    return out


def ranks(root, dp_size, micro, state=None, **kw):
    loaders = [build_loader(_cfg(root, **kw), "train", micro, dp_rank=r, dp_size=dp_size)
               for r in range(dp_size)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(json.loads(json.dumps(state)))  # must survive JSON
    return loaders


def test_ranks_are_disjoint_and_match_single_process(tiny_dataset):
    got = take(ranks(tiny_dataset, 3, 2), 4)
    ref = reference(tiny_dataset, 24)
    assert sorted(got) == list(range(24))
    assert [got[g] for g in range(24)] == ref


@pytest.mark.parametrize("before,after", [((2, 2), (1, 3)), ((1, 3), (2, 2)), ((2, 1), (3, 2))])
def test_resume_with_another_dp_size_covers_every_sample_once(tiny_dataset, before, after):
    (d0, b0), (d1, b1) = before, after
    first = ranks(tiny_dataset, d0, b0)
    seen = take(first, 5)
    states = [loader.state_dict() for loader in first]
    assert all(s == states[0] for s in states) and states[0]["samples_seen"] == 5 * d0 * b0
    resumed = ranks(tiny_dataset, d1, b1, state=states[0])
    more = take(resumed, 4)
    assert not set(seen) & set(more)
    union = {**seen, **more}
    n = 5 * d0 * b0 + 4 * d1 * b1
    assert sorted(union) == list(range(n))
    assert [union[g] for g in range(n)] == reference(tiny_dataset, n)


def test_resume_across_epoch_boundary_and_second_iter(tiny_dataset):
    loader = build_loader(_cfg(tiny_dataset), "train", 4)
    per_epoch = loader.samples_per_epoch
    n_batches = per_epoch // 4 + 2  # past the end of epoch 0
    list(itertools.islice(loader, n_batches))
    state = loader.state_dict()
    again = list(itertools.islice(loader, 3))  # a new iter() continues at the cursor
    fresh = build_loader(_cfg(tiny_dataset), "train", 4)
    fresh.load_state_dict(state)
    assert [b["input_ids"].tolist() for b in again] == \
        [b["input_ids"].tolist() for b in itertools.islice(fresh, 3)]
    ref = reference(tiny_dataset, (n_batches + 3) * 4)
    assert [r for b in again for r in b["input_ids"].tolist()] == ref[n_batches * 4:]


def test_workers_give_the_same_batches_and_state(tiny_dataset):
    plain = build_loader(_cfg(tiny_dataset), "train", 2, dp_rank=1, dp_size=2)
    pooled = build_loader(_cfg(tiny_dataset, num_workers=2), "train", 2, dp_rank=1, dp_size=2)
    a = [b["input_ids"].tolist() for b in itertools.islice(plain, 7)]
    b = [b["input_ids"].tolist() for b in itertools.islice(pooled, 7)]
    assert a == b and pooled.samples_seen == plain.samples_seen == 28
    assert [x["labels"].tolist() for x in itertools.islice(pooled, 2)] == \
        [x["labels"].tolist() for x in itertools.islice(plain, 2)]
    val_a = [x["position_ids"].tolist() for x in build_loader(_cfg(tiny_dataset), "val", 2)]
    val_b = [x["position_ids"].tolist()
             for x in build_loader(_cfg(tiny_dataset, num_workers=2), "val", 2)]
    assert val_a == val_b


def test_state_from_other_settings_is_refused(tiny_dataset):
    loader = build_loader(_cfg(tiny_dataset), "train", 2)
    state = loader.state_dict()
    other = build_loader(DataConfig(path=str(tiny_dataset), seq_len=SEQ + 1), "train", 2)
    with pytest.raises(DataError, match="seq_len=24, expected 25"):
        other.load_state_dict(state)
    with pytest.raises(DataError, match="seed"):
        build_loader(_cfg(tiny_dataset), "train", 2, seed=9).load_state_dict(state)
