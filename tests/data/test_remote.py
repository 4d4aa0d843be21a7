"""Remote sources over real HTTP: a moto S3 server on 127.0.0.1 (fixture ``s3``), datasets that
tools/prepare_data.py wrote and uploaded, read back through the loader and compared with the same
dataset read from local disk; prefetch, cache eviction, damaged shards and bad locations. Training
from S3 under torchrun, killed and resumed: tests/checkpoint/test_remote_resume.py."""
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tapa_scale.config import ConfigError, load_config
from tapa_scale.data import DataConfig, DataError, build_loader
from tapa_scale.data.remote import Fetch, upload_dataset

from tapa_scale.data.local_s3 import environment, free_port

REPO = Path(__file__).resolve().parents[2]  # tools/prepare_data.py is run from here
FAST = dict(download_attempts=2, download_backoff=0.01, download_timeout=10)
SEQ = 512  # ~3 samples per document: consecutive batches need different shards


def _remote(uri, cache, **kw):
    return DataConfig(path=uri, seq_len=kw.pop("seq_len", SEQ), cache_dir=str(cache), **{**FAST, **kw})


def _batches(cfg, n, micro=2):
    loader = build_loader(cfg, "train", micro)
    return [{k: v.numpy() for k, v in b.items()} for b in itertools.islice(loader, n)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def _cached(cache):
    return {p.name for p in Path(cache).glob("**/train/shard.*.mds")}


def _upload(root, uri):
    upload_dataset(Path(root), uri, Fetch(attempts=1))


def test_prepare_to_s3_then_train_split_matches_local(s3, sharded_dataset, tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    import prepare_data

    inputs = sharded_dataset.parent / "in"
    code = prepare_data.main(["--train", str(inputs / "train.jsonl"), "--val", str(inputs / "val.jsonl"),
                              "--out", "s3://data/cli", "--stage", str(tmp_path / "stage"),
                              "--shard-bytes", "8192"])
    assert code == 0
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix="cli/")["Contents"]}
    local_files = {str(p.relative_to(tmp_path / "stage")) for p in (tmp_path / "stage").rglob("*")
                   if p.is_file()}
    assert keys == {f"cli/{name}" for name in local_files}
    local = DataConfig(path=str(sharded_dataset), seq_len=SEQ)
    n = len(build_loader(local, "train", 2)) + 3  # past the end of the first epoch
    cache = tmp_path / "cache"
    want = _batches(local, n)
    _same(_batches(_remote("s3://data/cli", cache), n), want)
    _same(_batches(_remote("s3://data/cli", tmp_path / "cache2", num_workers=2), n), want)
    index = json.loads((sharded_dataset / "train" / "index.json").read_text())
    assert _cached(cache) == {s["raw_data"]["basename"] for s in index["shards"]}
    val = build_loader(_remote("s3://data/cli", cache), "val", 2)
    _same([{k: v.numpy() for k, v in b.items()} for b in val],
          [{k: v.numpy() for k, v in b.items()} for b in build_loader(local, "val", 2)])


def test_prefetch_fetches_the_next_batches_shards_only(s3, sharded_dataset, tmp_path):
    _upload(sharded_dataset, "s3://data/pre")
    cache = tmp_path / "cache"
    loader = build_loader(_remote("s3://data/pre", cache, prefetch=2), "train", 2)
    index = loader._index(read=True)  # a second index, only to ask which shards batches need

    def needed(batches):
        return {index.stores[0].readers[shard].raw_data.basename for b in batches
                for g in loader.batch_samples(b * loader.global_batch) for _, shard in index.shards(g)}

    batches = iter(loader)
    next(batches)
    assert needed(range(3)) != needed(range(1))  # the test would prove nothing otherwise
    for _ in range(100):  # the fetch threads finish shortly
        if _cached(cache) >= needed(range(3)):
            break
        time.sleep(0.05)
    assert _cached(cache) == needed(range(3))
    next(batches)
    for _ in range(100):
        if _cached(cache) >= needed(range(4)):
            break
        time.sleep(0.05)
    assert _cached(cache) == needed(range(4))


def _size(path: Path) -> int:
    """Bytes of a cached shard; 0 when the loader evicted it between listing and reading."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_cache_limit_evicts_and_batches_stay_exact(s3, sharded_dataset, tmp_path):
    _upload(sharded_dataset, "s3://data/evict")
    index = json.loads((sharded_dataset / "train" / "index.json").read_text())
    sizes = [s["raw_data"]["bytes"] for s in index["shards"]]
    limit = 2 * max(sizes)
    cfg = _remote("s3://data/evict", tmp_path / "cache", prefetch=0, cache_limit_mb=limit / (1 << 20))
    local = DataConfig(path=str(sharded_dataset), seq_len=SEQ)
    n = 2 * len(build_loader(local, "train", 1))  # two epochs: every shard fetched again
    loader = build_loader(cfg, "train", 1)
    got = []
    for batch in itertools.islice(loader, n):
        got.append({k: v.numpy() for k, v in batch.items()})
        held = sum(_size(p) for p in (tmp_path / "cache").glob("**/train/shard.*.mds"))
        assert held <= limit + max(sizes)  # the limit, plus a shard the current sample pins
    assert len(_cached(tmp_path / "cache")) < len(sizes)
    _same(got, _batches(local, n, micro=1))


@pytest.mark.parametrize("damage", ["missing", "flipped"])
def test_damaged_remote_shard_is_one_line_naming_uri_and_shard(s3, sharded_dataset, tmp_path, damage):
    uri = f"s3://data/{damage}"
    _upload(sharded_dataset, uri)
    index = json.loads((sharded_dataset / "train" / "index.json").read_text())
    raw = index["shards"][1]["raw_data"]
    key = f"{damage}/train/{raw['basename']}"
    if damage == "missing":
        s3.delete_object(Bucket="data", Key=key)
    else:
        body = bytearray(s3.get_object(Bucket="data", Key=key)["Body"].read())
        body[len(body) // 2] ^= 0x01
        s3.put_object(Bucket="data", Key=key, Body=bytes(body))
    loader = build_loader(_remote(uri, tmp_path / "cache"), "train", 2)
    with pytest.raises(DataError) as info:
        for _ in itertools.islice(loader, len(loader) + 1):
            pass
    message = str(info.value)
    reason = "not found" if damage == "missing" else "sha1 checksum mismatch (corrupted)"
    assert message == (f"{uri}/train/{raw['basename']}: shard 1 {reason} after 2 attempts; expected "
                       f"{raw['bytes']} bytes with sha1 {raw['hashes']['sha1']} as listed in "
                       f"{uri}/train/index.json")
    assert raw["basename"] not in _cached(tmp_path / "cache")  # nothing damaged stays cached


def test_bad_locations_are_one_line_before_training(s3, tmp_path):
    with pytest.raises(ConfigError, match=r"data.path='ftp://x/d': unknown URI scheme 'ftp'; "
                                          r"expected a local directory or one of .*s3://"):
        load_config(None, ["data.path=ftp://x/d"])
    with pytest.raises(ConfigError, match=r"data.sources\[1\].weight=-1.0: expected a finite weight"):
        load_config(None, ["data.sources=[{path: s3://a/b}, {path: s3://a/c, weight: -1}]"])
    with pytest.raises(ConfigError, match=r"weights \[0.0, 0.0\]: expected a positive sum"):
        load_config(None, ["data.sources=[{path: s3://a/b, weight: 0}, {path: s3://a/c, weight: 0}]"])
    with pytest.raises(DataError, match=r"^s3://data/none/manifest.json: cannot fetch, not found after "
                                        r"2 attempts; expected a dataset written by tools/prepare_data.py$"):
        build_loader(_remote("s3://data/none", tmp_path / "c"), "train", 1)
    dead = f"http://127.0.0.1:{free_port()}"
    with environment({"S3_ENDPOINT_URL": dead}):
        with pytest.raises(DataError, match=r"^s3://data/x/manifest.json: cannot fetch, endpoint "
                                            rf"unreachable \(EndpointConnectionError, S3_ENDPOINT_URL={dead}\)"):
            build_loader(_remote("s3://data/x", tmp_path / "c"), "train", 1)
