"""Packing invariants: next-token labels, per-document positions/segments, one epoch = all docs."""
import itertools
import json

import numpy as np
import pytest

from tapa_scale.data import DataConfig, build_loader
from tapa_scale.data.packing import sample_fields
from tapa_scale.data.prepare import prepare_dataset

from tests.data.helpers import small_docs, write_jsonl

EOS = 0


def _epoch(loader):
    """All samples of one epoch of a D=1, B=1 loader, as int64 arrays (inputs, labels, pos, seg)."""
    rows = []
    for batch in itertools.islice(loader, loader.samples_per_epoch):
        rows.append({k: v[0].numpy() for k, v in batch.items()})
    return rows


def _documents(root):
    from streaming.base.format import reader_from_json
    index = json.loads((root / "train" / "index.json").read_text())
    reader = reader_from_json(str(root), "train", index["shards"][0])
    return [tuple(reader.get_item(i)["tokens"].tolist()) for i in range(reader.samples)]


def test_sample_fields_on_a_known_window():
    window = np.array([5, 6, EOS, 7, 8, 9, EOS, EOS, 4, 3])
    f = sample_fields(window, EOS)
    assert f["input_ids"].tolist() == [5, 6, EOS, 7, 8, 9, EOS, EOS, 4]
    assert f["labels"].tolist() == [6, EOS, 7, 8, 9, EOS, EOS, 4, 3]
    assert f["position_ids"].tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 0]
    assert f["segment_ids"].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 3]


@pytest.mark.parametrize("seq_len", [16, 97])
def test_epoch_is_every_document_once_and_fields_are_consistent(tiny_dataset, seq_len):
    loader = build_loader(DataConfig(path=str(tiny_dataset), seq_len=seq_len), "train", 1, seed=3)
    rows = _epoch(loader)
    stream = np.concatenate([r["input_ids"] for r in rows] + [rows[-1]["labels"][-1:]])
    for a, b in zip(rows, rows[1:]):  # consecutive windows overlap by exactly one token
        assert a["labels"][-1] == b["input_ids"][0]
    for r in rows:
        assert np.array_equal(r["labels"][:-1], r["input_ids"][1:])
        assert np.array_equal(r["position_ids"], sample_fields(
            np.append(r["input_ids"], r["labels"][-1]), EOS)["position_ids"])
        starts = np.flatnonzero(r["position_ids"] == 0)
        assert starts[0] == 0 and all(r["input_ids"][s - 1] == EOS for s in starts[1:])
        assert np.array_equal(np.diff(r["segment_ids"]) == 1, r["input_ids"][:-1] == EOS)
    assert sum((r["input_ids"] == EOS).any() for r in rows) > 0  # packing does cross documents
    pieces = [tuple(p) for p in np.split(stream, np.flatnonzero(stream == EOS) + 1)]
    docs = _documents(tiny_dataset)
    complete = [p[:-1] for p in pieces if p and p[-1] == EOS]
    assert len(set(complete)) == len(complete) and set(complete) <= set(docs)
    # everything but the dropped tail (< seq_len + 1 tokens) of the epoch was used
    total = sum(len(d) + 1 for d in docs)
    assert total - len(stream) < seq_len + 1 and len(complete) >= len(docs) - 1


def test_train_reshuffles_per_epoch_and_val_is_fixed(tiny_dataset):
    cfg = DataConfig(path=str(tiny_dataset), seq_len=32)
    loader = build_loader(cfg, "train", 1, seed=1)
    n = loader.samples_per_epoch
    samples = [b["input_ids"][0].tolist() for b in itertools.islice(loader, 2 * n)]
    assert samples[:n] != samples[n:]  # epoch 2 has another document order
    assert loader.samples_seen == 2 * n
    other_seed = build_loader(cfg, "train", 1, seed=2)
    assert [b["input_ids"][0].tolist() for b in itertools.islice(other_seed, n)] != samples[:n]
    val = build_loader(cfg, "val", 2)
    first, second = list(val), list(val)
    assert len(first) == len(val) > 0
    assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(first, second))
    unshuffled = build_loader(DataConfig(path=str(tiny_dataset), seq_len=32, shuffle=False),
                              "train", 1)
    docs = _documents(tiny_dataset)
    assert next(iter(unshuffled))["input_ids"][0].tolist() == list(docs[0][:32])


def test_val_fraction_split_loader_works(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", small_docs(4, 3000))
    prepare_dataset([src], tmp_path / "out", val_fraction=0.5, progress=False)
    val = build_loader(DataConfig(path=str(tmp_path / "out"), seq_len=64), "val", 2)
    assert len(list(val)) == len(val) > 0
