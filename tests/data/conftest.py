"""Shared fixtures for the data tests: small prepared datasets built from embedded documents."""
from __future__ import annotations

from pathlib import Path

import pytest

from tapa_scale.data.prepare import prepare_dataset
from tests.data.helpers import small_docs, write_jsonl


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A prepared dataset: 10 train documents (~16k tokens), 3 val documents."""
    base = tmp_path_factory.mktemp("tiny")
    docs = small_docs(13)
    train = write_jsonl(base / "in" / "train.jsonl", docs[:10])
    val = write_jsonl(base / "in" / "val.jsonl", docs[10:])
    out = base / "prepared"
    prepare_dataset([train], out, val=[val], progress=False)
    return out


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> Path:
    """A cache dir shared by the tests that prepare the whole embedded corpus."""
    return tmp_path_factory.mktemp("embedded_cache")


@pytest.fixture(scope="session")
def sharded_dataset(tmp_path_factory) -> Path:
    """The documents of tiny_dataset prepared with 8 kB shards (several per split): what remote
    fetching, prefetching and eviction act on."""
    base = tmp_path_factory.mktemp("sharded")
    docs = small_docs(13)
    train = write_jsonl(base / "in" / "train.jsonl", docs[:10])
    val = write_jsonl(base / "in" / "val.jsonl", docs[10:])
    out = base / "prepared"
    prepare_dataset([train], out, val=[val], shard_bytes=8192, progress=False)
    return out


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 for one test module, with a bucket, the standard AWS
    environment pointing at it, and a boto3 client for the tests' own uploads and damage."""
    import boto3

    from tapa_scale.data.local_s3 import environment, moto_server, s3_env

    with moto_server() as url, environment(s3_env(url)):
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="data")
        yield client
