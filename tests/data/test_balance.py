"""Micro-batches balanced by attention cost: the same samples per step, even cost, exact resume."""
import itertools
import json
from collections import Counter

import numpy as np
import pytest

from tapa_scale.data import DataConfig, DataError, build_loader
from tapa_scale.data.balance import balance_bins
from tapa_scale.data.corpus import corpus_file, read_jsonl_gz
from tapa_scale.data.prepare import prepare_dataset
from tests.data.helpers import write_jsonl

SEQ, STEP = 64, 8  # a step: 8 global samples


@pytest.fixture(scope="module")
def mixed_lengths(tmp_path_factory):
    """Documents from 10 to ~700 characters: packed samples of one long document or many short."""
    base = tmp_path_factory.mktemp("mixed_lengths")
    rng = np.random.default_rng(3)
    docs = [r["text"] for r in itertools.islice(read_jsonl_gz(corpus_file("train")), 80)]
    texts = [t[:int(n)] for t, n in zip(docs, rng.choice([10, 40, 120, 700], size=80, p=[0.35, 0.3, 0.25, 0.1]))]
    out = base / "prepared"
    prepare_dataset([write_jsonl(base / "train.jsonl", texts[:70])], out,
                    val=[write_jsonl(base / "val.jsonl", texts[70:])], progress=False)
    return out


def _loaders(root, dp, micro, balance, state=None):
    cfg = DataConfig(path=str(root), seq_len=SEQ, balance_attention=balance)
    loaders = [build_loader(cfg, "train", micro, dp_rank=r, dp_size=dp, step_samples=STEP)
               for r in range(dp)]
    for loader in loaders:
        if state is not None:
            loader.load_state_dict(json.loads(json.dumps(state)))
    return loaders


def _cost(segment_ids):
    """Sum of squared document lengths of one sample, counted from its segment ids."""
    return int((np.bincount(segment_ids.numpy()) ** 2).sum())


def _steps(loaders, n_steps):
    """Per step: the multiset of its samples, the attention cost of each (rank, micro-batch) and of
    each sample."""
    per_rank = STEP // (loaders[0].micro_batch_size * loaders[0].dp_size)
    its = [iter(loader) for loader in loaders]
    out = []
    for _ in range(n_steps):
        rows, costs, each = Counter(), [], []
        for _ in range(per_rank):
            for it in its:
                batch = next(it)
                rows.update(tuple(r) for r in batch["input_ids"].tolist())
                each += [_cost(s) for s in batch["segment_ids"]]
                costs.append(sum(each[-len(batch["segment_ids"]):]))
        out.append((rows, costs, each))
    return out


def test_bins_partition_the_samples_at_fixed_size():
    costs = [100, 1, 1, 1, 90, 5, 5, 80]
    bins = balance_bins(list(range(8)), costs, 4, 2)
    assert sorted(g for b in bins for g in b) == list(range(8)) and all(len(b) == 2 for b in bins)
    assert max(sum(costs[g] for g in b) for b in bins) == 101  # each big one with a small one


def _best_peak(costs):
    """The lowest possible largest micro-batch cost: every way of pairing 8 samples, enumerated."""
    def pairings(rest):
        if not rest:
            yield []
            return
        for k in range(1, len(rest)):
            for more in pairings(rest[1:k] + rest[k + 1:]):
                yield [(rest[0], rest[k])] + more
    return min(max(costs[a] + costs[b] for a, b in p) for p in pairings(list(range(len(costs)))))


def test_balanced_steps_hold_the_same_samples_at_the_best_peak_cost(mixed_lengths):
    plain = _steps(_loaders(mixed_lengths, 2, 2, balance=False), 8)
    even = _steps(_loaders(mixed_lengths, 2, 2, balance=True), 8)
    worse = 0
    for (rows_p, cost_p, _), (rows_e, cost_e, each) in zip(plain, even):
        assert rows_p == rows_e  # the step's samples are unchanged
        best = _best_peak(each)
        assert sum(cost_p) == sum(cost_e) and max(cost_e) <= 1.05 * best, (cost_e, best)
        worse += max(cost_p) > best
    assert worse >= 4, worse  # plain sharding misses the best peak often on these documents


@pytest.mark.parametrize("dp,micro", [(1, 2), (4, 1)])
def test_resume_at_a_step_boundary_with_another_layout(mixed_lengths, dp, micro):
    first = _loaders(mixed_lengths, 2, 2, balance=True)
    _steps(first, 3)
    state = first[0].state_dict()
    assert state["samples_seen"] == 3 * STEP
    resumed = _steps(_loaders(mixed_lengths, dp, micro, balance=True, state=state), 3)
    whole = _steps(_loaders(mixed_lengths, 2, 2, balance=True), 6)[3:]
    assert [step[0] for step in resumed] == [step[0] for step in whole]


def test_resume_inside_a_step_is_refused(mixed_lengths):
    loader = _loaders(mixed_lengths, 2, 2, balance=False)[0]
    list(itertools.islice(iter(loader), 1))  # 4 samples: half a step
    with pytest.raises(DataError, match="not a multiple of the 8 samples"):
        _loaders(mixed_lengths, 2, 2, balance=True, state=loader.state_dict())
