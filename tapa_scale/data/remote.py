"""Prepared datasets in object storage, fetched with mosaicml-streaming's download machinery.

A remote source is a URI (``s3://bucket/prefix`` and the other schemes streaming has downloaders
for) of a directory laid out as ``tools/prepare_data.py`` writes it. At start-up its metadata
(``manifest.json``, then each split's ``index.json`` and ``samples.npy``) is mirrored into the
source's cache directory, under ``<cache>/<dataset fingerprint>/`` so that shards of a changed
remote dataset never mix with old ones. Shards are fetched when the loader needs them, or ahead of
use (``RemoteShards.prefetch``), by streaming's ``Stream.prepare_shard`` (its downloader, with the
sha1 listed in ``index.json`` checked by streaming), and evicted with streaming's
``Reader.evict`` when a split's cached shards exceed the limit. Our global sample cursor decides which shard is
needed when; streaming's own sampler and shared-memory state (``StreamingDataset``) are not used.

Credentials are whatever the provider's client finds (for S3: boto3's chain, i.e. ``AWS_*``
environment variables, ``~/.aws`` profiles, instance roles); ``S3_ENDPOINT_URL`` points at an
S3-compatible server. Nothing of it is read from our configuration.
"""
from __future__ import annotations

import json
import os
import threading
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

METADATA = ("index.json", "samples.npy")


def schemes() -> list[str]:
    """URI schemes mosaicml-streaming can download from (its registered downloaders)."""
    from streaming.base.storage.download import DOWNLOADER_MAPPINGS
    return sorted(s for s in DOWNLOADER_MAPPINGS if s not in ("", "dbfs-uc"))  # local; dbfs:/Volumes


def is_remote(path: str) -> bool:
    return "://" in path or path.startswith("dbfs:/")


def location_problem(key: str, value: str) -> str | None:
    """Why ``value`` (a config key's dataset location) cannot be used, or None."""
    if not value or not is_remote(value):
        return None
    scheme = urllib.parse.urlparse(value).scheme
    if scheme not in schemes():
        return (f"{key}={value!r}: unknown URI scheme {scheme!r}; expected a local directory or "
                f"one of {', '.join(s + '://' for s in schemes())}")
    if not urllib.parse.urlparse(value).netloc and scheme != "dbfs":
        return f"{key}={value!r}: the URI has no bucket/host; expected e.g. {scheme}://bucket/prefix"
    return None


@dataclass
class Fetch:
    """How remote files are fetched: attempts, backoff before the 2nd (doubling), timeout."""
    attempts: int = 3
    backoff: float = 1.0
    timeout: float = 60.0


def _reason(exc: BaseException) -> str:
    """A short cause for a failed fetch: not found, access denied, unreachable, corrupted, ..."""
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    name = type(exc).__name__
    if code in ("404", "NoSuchKey", "NoSuchBucket") or isinstance(exc, FileNotFoundError):
        return "not found"
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"access denied ({code}; credentials come from the provider's standard chain)"
    if "Checksum failure" in str(exc):
        return "sha1 checksum mismatch (corrupted)"
    if isinstance(exc, _SizeMismatch):
        return str(exc)
    if "Endpoint" in name or "Connect" in name:
        endpoint = os.environ.get("S3_ENDPOINT_URL", "")
        return (f"endpoint unreachable ({name}"
                + (f", S3_ENDPOINT_URL={endpoint}" if endpoint else "") + ")")
    return f"{name}: {' '.join(str(exc).split())[:200]}"


class _SizeMismatch(ValueError):
    pass


def _with_retries(fetch: Fetch, attempt, clean_up) -> None:
    """``attempt()`` under streaming's retry (exponential backoff with jitter); re-raises the
    last failure."""
    from streaming.base.util import retry

    retry(Exception, clean_up_fn=clean_up, num_attempts=max(1, fetch.attempts),
          initial_backoff=fetch.backoff, max_jitter=fetch.backoff / 2)(attempt)()


def download(uri: str, local: Path, fetch: Fetch) -> None:
    """Fetch one file to ``local`` (atomically: a private temporary name, then a rename)."""
    from streaming.base.storage.download import CloudDownloader

    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}.tmp")

    def clean_up():
        tmp.unlink(missing_ok=True)

    try:
        _with_retries(fetch, lambda: CloudDownloader.direct_download(uri, str(tmp), fetch.timeout),
                      clean_up)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the one line below
        raise DataError(f"{uri}: cannot fetch, {_reason(exc)} after {max(1, fetch.attempts)} "
                        f"attempts; expected a dataset written by tools/prepare_data.py") from None
    os.replace(tmp, local)


def mirror_metadata(uri: str, cache_dir: Path, fetch: Fetch) -> Path:
    """Fetch the manifest (every start: the remote may have changed) and, once per dataset
    fingerprint, each split's index and sample table; returns the local dataset root."""
    uri = uri.rstrip("/")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fresh = cache_dir / f".manifest.{os.getpid()}.json"
    download(f"{uri}/manifest.json", fresh, fetch)
    try:
        fingerprint = str(json.loads(fresh.read_text())["fingerprint"])
    except (ValueError, KeyError, TypeError):
        fresh.unlink(missing_ok=True)
        raise DataError(f"{uri}/manifest.json: not a manifest of tools/prepare_data.py (no "
                        "fingerprint)") from None
    root = cache_dir / fingerprint
    for split in ("train", "val"):
        for name in METADATA:
            if not (root / split / name).is_file():
                download(f"{uri}/{split}/{name}", root / split / name, fetch)
    os.replace(fresh, root / "manifest.json")
    return root


def upload_dataset(root: Path, uri: str, fetch: Fetch) -> None:
    """Copy a prepared dataset directory to ``uri`` with streaming's uploader: the splits first,
    ``manifest.json`` last, so a reader never finds a manifest whose files are not there yet."""
    from streaming.base.storage.upload import CloudUploader

    uri = uri.rstrip("/")
    files = sorted(str(p.relative_to(root)) for split in ("train", "val")
                   for p in (root / split).iterdir() if p.is_file())
    name = ""
    try:
        uploader = CloudUploader.get(out=(str(root), uri), keep_local=True,
                                     retry=max(1, fetch.attempts), exist_ok=True)
        for name in files + ["manifest.json"]:
            uploader.upload_file(name)
    except Exception as exc:  # noqa: BLE001 - one line naming the file and the cause
        raise DataError(f"{uri}/{name}: cannot upload, {_reason(exc)}") from None


class LocalShards:
    """Random access to the MDS samples of a split whose shards are all on local disk."""

    def __init__(self, root: Path, split: str):
        from streaming.base.format import reader_from_json

        index = json.loads((root / split / "index.json").read_text())
        self.root, self.split = root, split
        self.readers = [reader_from_json(str(root), split, shard) for shard in index["shards"]]
        self.first = np.concatenate([[0], np.cumsum([r.samples for r in self.readers])])

    def shard_of(self, chunk: int) -> int:
        return int(np.searchsorted(self.first, chunk, side="right")) - 1

    def __call__(self, chunk: int) -> np.ndarray:
        shard = self.shard_of(chunk)
        return self._read(shard, chunk - int(self.first[shard]))

    def _read(self, shard: int, idx: int) -> np.ndarray:
        return np.asarray(self.readers[shard].get_item(idx)["tokens"])

    def prefetch(self, shards) -> None:
        """Nothing to fetch: every shard is local."""

    def pin(self, shards) -> None:
        """Nothing is ever evicted from a local dataset."""


class RemoteShards(LocalShards):
    """The shards of one split of a remote source, fetched into its cache on demand or ahead.

    A shard counts as cached when its file has the size listed in index.json (fetches land under a
    temporary name and are renamed, so a file of the right size is complete); a fetched shard's
    sha1 is checked by streaming against index.json unless checksums are off. With a cache limit,
    the least recently used shards of the split (file mtimes: shared by every process using the
    cache) are evicted, never those pinned for the current and prefetched batches of this process.
    Another process may still evict a shard we are about to read: reading fetches it again.
    """

    def __init__(self, uri: str, root: Path, split: str, fetch: Fetch, *, verify: bool,
                 limit_bytes: int, threads: int = 4):
        from streaming.base.stream import Stream

        super().__init__(root, split)
        self.uri, self.fetch, self.limit = uri.rstrip("/"), fetch, int(limit_bytes)
        self.stream = Stream(remote=self.uri, local=str(root), split=split, download_retry=1,
                             download_timeout=fetch.timeout,
                             validate_hash="sha1" if verify else None, keep_zip=False)
        self.threads = threads
        self.pool: ThreadPoolExecutor | None = None
        self.pending: dict[int, Future] = {}
        self.pinned: set[int] = set()
        self.lock = threading.Lock()
        self._last_touched = -1

    def path(self, shard: int) -> Path:
        return self.root / self.split / self.readers[shard].raw_data.basename

    def cached(self, shard: int) -> bool:
        try:
            return self.path(shard).stat().st_size == self.readers[shard].raw_data.bytes
        except FileNotFoundError:
            return False

    def _fetch(self, shard: int) -> None:
        reader = self.readers[shard]
        raw = reader.raw_data

        def attempt():
            if self.cached(shard):
                return
            self.stream.prepare_shard(reader)
            size = self.path(shard).stat().st_size
            if size != raw.bytes:
                raise _SizeMismatch(f"size {size} bytes, expected {raw.bytes}")

        def clean_up():
            reader.evict()  # a wrong or partial file must not look cached

        try:
            _with_retries(self.fetch, attempt, clean_up)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the one line below
            hashes = (raw.hashes or {}).get("sha1")
            raise DataError(
                f"{self.uri}/{self.split}/{raw.basename}: shard {shard} {_reason(exc)} after "
                f"{max(1, self.fetch.attempts)} attempts; expected {raw.bytes} bytes"
                + (f" with sha1 {hashes}" if hashes else "")
                + f" as listed in {self.uri}/{self.split}/index.json") from None
        os.utime(self.path(shard))  # most recently used, for every process sharing the cache
        self._make_room()

    def prefetch(self, shards) -> None:
        """Start fetching ``shards`` in background threads (those not cached or on their way)."""
        for shard in shards:
            if shard in self.pending or self.cached(shard):
                continue
            if self.pool is None:
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shard-fetch")
            self.pending[shard] = self.pool.submit(self._fetch, shard)

    def pin(self, shards) -> None:
        """Shards the current and prefetched batches need: eviction leaves them alone."""
        with self.lock:
            self.pinned = set(shards)

    def ensure(self, shard: int) -> None:
        """Return once ``shard`` is cached (waiting for its prefetch, or fetching it now)."""
        future = self.pending.pop(shard, None)
        if future is not None:
            future.result()  # re-raises the fetch's DataError
        if not self.cached(shard):
            self._fetch(shard)
        elif shard != self._last_touched:
            try:
                os.utime(self.path(shard))
            except FileNotFoundError:
                pass
        self._last_touched = shard

    def _read(self, shard: int, idx: int) -> np.ndarray:
        for _ in range(3):
            self.ensure(shard)
            try:
                return super()._read(shard, idx)
            except FileNotFoundError:  # evicted by another process between ensure and open
                continue
        raise DataError(f"{self.path(shard)}: shard keeps disappearing from the cache; expected "
                        "data.cache_limit_mb to hold the shards in use by every process")

    def _make_room(self) -> None:
        """Evict least recently used, unpinned shards until this split's cache is under its limit."""
        if self.limit <= 0:
            return
        with self.lock:
            present = []
            for shard in range(len(self.readers)):
                try:
                    st = self.path(shard).stat()
                except FileNotFoundError:
                    continue
                present.append((st.st_mtime_ns, st.st_size, shard))
            total = sum(size for _, size, _ in present)
            keep = self.pinned | set(self.pending)
            for _, size, shard in sorted(present):
                if total <= self.limit:
                    break
                if shard not in keep:
                    total -= self.readers[shard].evict()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
