"""The embedded corpus prepares on first use and yields well-formed batches."""
import itertools

import torch

from tapa_scale.data import DataConfig, build_loader, ensure_dataset, eval_documents


def test_ensure_dataset_embedded_and_loader_shapes(embedded_cache):
    cfg = DataConfig(cache_dir=str(embedded_cache), seq_len=64)
    root = ensure_dataset(cfg)
    assert (root / "manifest.json").is_file() and (root / "train" / "index.json").is_file()
    assert ensure_dataset(cfg) == root  # second call finds it ready
    loader = build_loader(cfg, "train", 3)
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "labels", "position_ids", "segment_ids"}
    for value in batch.values():
        assert value.shape == (3, 64) and value.dtype == torch.int64
    assert loader.samples_seen == 3
    val = build_loader(cfg, "val", 4)
    first = [b["input_ids"] for b in itertools.islice(val, 3)]
    again = [b["input_ids"] for b in itertools.islice(val, 3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_eval_documents_are_the_held_out_texts(tmp_path):
    paths = eval_documents(tmp_path)
    names = [p.name for p in paths]
    assert names == sorted(names) and len(paths) >= 6
    assert sum("austen" in n for n in names) == 6
    text = next(p for p in paths if "prideprejudice" in p.name).read_text(encoding="utf-8")
    assert "It is a truth universally acknowledged" in text
    assert eval_documents(tmp_path) == paths
