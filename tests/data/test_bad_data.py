"""Bad data fails early with one DataError naming the file and what was expected."""
import json
import re
import shutil

import pytest

from tapa_scale.data import DataConfig, DataError, build_loader, ensure_dataset, load_tokenizer
from tapa_scale.data.prepare import prepare_dataset
from tapa_scale.data.tokenizer import TOKENIZER_DIR

from tests.data.helpers import small_docs, write_jsonl


@pytest.fixture
def dataset(tiny_dataset, tmp_path):
    """A private copy of the tiny dataset that a test may damage."""
    return shutil.copytree(tiny_dataset, tmp_path / "ds")


def _shard(root):
    return next((root / "train").glob("shard.*.mds"))


def _raises(cfg, *patterns):
    with pytest.raises(DataError) as info:
        ensure_dataset(cfg)
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), str(info.value)
    return str(info.value)


def test_missing_shard(dataset):
    shard = _shard(dataset)
    size = shard.stat().st_size
    shard.unlink()
    _raises(DataConfig(path=str(dataset)), re.escape(str(shard)), "missing shard",
            f"expected {size} bytes", "index.json")


def test_truncated_shard(dataset):
    shard = _shard(dataset)
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    _raises(DataConfig(path=str(dataset)), re.escape(str(shard)),
            f"is {len(data) - 100} bytes, expected {len(data)} bytes", "truncated")


def test_corrupted_shard_same_size(dataset):
    shard = _shard(dataset)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    _raises(DataConfig(path=str(dataset)), re.escape(str(shard)), "sha1 checksum mismatch")
    # with checksums off, only sizes are checked (the documented fast path)
    assert ensure_dataset(DataConfig(path=str(dataset), verify_checksums=False)) == dataset


def test_tokenizer_not_matching_manifest(dataset, tmp_path):
    other = shutil.copytree(TOKENIZER_DIR, tmp_path / "tok")
    spec = json.loads((other / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:-1]  # a (slightly) different tokenizer
    (other / "tokenizer.json").write_text(json.dumps(spec))
    load_tokenizer(str(other))  # still a valid tokenizer
    _raises(DataConfig(path=str(dataset), tokenizer=str(other)),
            re.escape(str(other / "tokenizer.json")), "does not match",
            re.escape(str(dataset / "manifest.json")))


def test_missing_paths(tmp_path):
    _raises(DataConfig(path=str(tmp_path / "nope")), re.escape(str(tmp_path / "nope")),
            "does not exist", "prepare_data")
    _raises(DataConfig(path=str(tmp_path)), re.escape(str(tmp_path / "manifest.json")),
            "missing dataset manifest")
    _raises(DataConfig(path=str(tmp_path), tokenizer=str(tmp_path / "t")),
            re.escape(str(tmp_path / "t" / "tokenizer.json")), "tokenizer not found")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "in.txt")) + ".*does not exist"):
        prepare_dataset([tmp_path / "in.txt"], tmp_path / "out", progress=False)


def test_empty_and_malformed_inputs(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    with pytest.raises(DataError, match=re.escape(str(empty)) + ".*no non-empty documents"):
        prepare_dataset([empty], tmp_path / "out", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "wrong field"}\n')
    with pytest.raises(DataError, match=re.escape(f"{bad}:2") + ".*no string field 'text'"):
        prepare_dataset([bad], tmp_path / "out", progress=False)
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(DataError, match=re.escape(f"{bad}:2") + ".*invalid JSON"):
        prepare_dataset([bad], tmp_path / "out", progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.bin").write_bytes(b"\0")
    with pytest.raises(DataError, match="no input files"):
        prepare_dataset([tmp_path / "junk"], tmp_path / "out", progress=False)


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", small_docs(3, 1000))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and has no manifest.json"):
        prepare_dataset([src], tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_dataset_too_small_for_the_batch(tiny_dataset):
    with pytest.raises(DataError, match=r"val: only \d+ packed samples.*at least one global batch"):
        build_loader(DataConfig(path=str(tiny_dataset), seq_len=1024), "val", 64, dp_size=4)
