"""Training from object storage: the embedded corpus, uploaded to a moto S3 server on 127.0.0.1, is
trained on by 2 torchrun ranks that are killed with SIGKILL after a checkpoint and rerun with the same
command (the shard cache left as the kill found it). Every logged loss, lr, token count and the final
validation loss must equal, bit for bit, the uninterrupted DP=2 run that read the same dataset from
local disk: the remote path changes where the bytes come from, never which samples are trained on.

Would catch: a remote source that reorders or drops samples, a cache left by a killed run that blocks
or corrupts the next one, a resume that refetches a different dataset than the checkpoint's."""
from pathlib import Path

from tapa_scale.data import DataConfig, ensure_dataset
from tapa_scale.data.remote import Fetch, upload_dataset

from tests.checkpoint.harness import (LAYOUTS, REPO, RUN, assert_same_losses, checkpoint_steps, kill_after,
                                      logged_steps, printed_steps, start, train)
from tapa_scale.data.local_s3 import environment, moto_server, s3_env


def test_killed_run_from_s3_resumes_bit_identically(tmp_path, uninterrupted):
    import boto3

    reference = uninterrupted("dp2")
    root = ensure_dataset(DataConfig(cache_dir=str(REPO / ".cache" / "data")))  # what the reference read
    with moto_server() as url, environment(s3_env(url)):
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="corpus")
        upload_dataset(Path(root), "s3://corpus/embedded", Fetch(attempts=1))
        nproc, overrides = LAYOUTS["dp2"]
        crashed = tmp_path / "crashed"
        args = [f"run.dir={crashed}", *RUN, *overrides, "data.path=s3://corpus/embedded",
                f"data.cache_dir={tmp_path / 'cache'}", "data.download_backoff=0.05"]
        kill_after(start(nproc, *args), crashed, 4)
        resumed_from = checkpoint_steps(crashed)[-1]
        assert resumed_from >= 2 and logged_steps(crashed)[-1] < 8
        assert list((tmp_path / "cache").glob("remote/*/*/train/shard.*.mds"))  # fetched, then killed
        out = train(nproc, *args)
        assert printed_steps(out) == list(range(resumed_from + 1, 9)), printed_steps(out)
    assert_same_losses(reference, crashed)
