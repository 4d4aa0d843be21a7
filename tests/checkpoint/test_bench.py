"""tools/bench_checkpoint.py on the tiny config: it runs, its JSON holds what docs/checkpoints.md
reports, and the numbers are consistent with the checkpoint it wrote (no thresholds on speed here).

Would catch: the benchmark rotting as the saver or resume API changes, a size that is not the
checkpoint's, an asynchronous save that never gets published within the timed call."""
import json
import subprocess
import sys

from tests.checkpoint.harness import REPO, env


def test_bench_checkpoint_json(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "tools/bench_checkpoint.py", "--configs", "configs/tiny.yaml",
                          "--repeats", "1", "--json", str(out), "model.num_layers=2"], cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (r,) = json.loads(out.read_text())["results"]
    # two layers of the tiny model, fp32 weights plus two AdamW moments: ~3 x 4 bytes per parameter
    assert 12 * r["parameters"] < r["size_mb"] * 1e6 < 12 * r["parameters"] + 2e6
    for key in ("sync_save_s", "async_blocking_s", "async_publish_poll_s", "async_published_s", "load_s"):
        assert r[key] > 0 and len(r["runs"][key]) == 1
    assert r["async_blocking_s"] <= r["async_published_s"]
    assert "published" in res.stderr
