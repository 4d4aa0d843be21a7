"""tools/inspect_checkpoint.py on a real TP=2 checkpoint, a weights-only one made from its weights, and
damaged, partial and non-checkpoint directories.

Would catch: shapes reported per rank instead of global (a TP slice, a layer without the stacked layer
axis), optimizer moments counted as parameters, a layout, step or data position not read from
state.json, a damaged or partial checkpoint reported as complete or stopping the tool, a dist metadata
pickle unpickled before the allow-list check, a traceback instead of one line for a wrong path."""
import json
import math
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import save_file

from tapa_scale.train import checkpoint as ckpt
from tests.checkpoint.harness import REPO, env, train


def inspect(*args, expect=0):
    res = subprocess.run([sys.executable, "tools/inspect_checkpoint.py", "--checkpoint", *map(str, args)],
                         cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == expect, res.stdout[-2000:] + res.stderr[-2000:]
    return res


def inspect_json(*args):
    return json.loads(inspect(*args, "--json").stdout)


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    """The run directory of a 2-step run at TP=2 (two processes), and its checkpoint."""
    run = tmp_path_factory.mktemp("inspect") / "tp2"
    train(2, f"run.dir={run}", "train.steps=2", "parallel.tp=2")
    return run, ckpt.latest_checkpoint(run)


def stacked_shapes(full: dict) -> dict:
    """full_state_dict's per-layer tensors as dist/ stores them: `decoder.layers.<name>` with a layer axis."""
    out = {}
    for key, value in full.items():
        if key.startswith("decoder.layers."):
            layer, rest = key[len("decoder.layers."):].split(".", 1)
            shape = out.setdefault(f"decoder.layers.{rest}", [0, *value.shape])
            shape[0] = max(shape[0], int(layer) + 1)
        else:
            out[key] = list(value.shape)
    return out


def test_sharded_checkpoint_reports_global_shapes_state_and_sizes(tp2):
    run, path = tp2
    r = inspect_json(run)  # a run directory means its latest complete checkpoint
    assert r["path"] == str(path) and r["kind"] == "sharded" and r["complete"] is True and r["reason"] is None
    assert r["step"] == 2 and r["optimizer_steps"] == 2 and r["skipped_steps"] == 0 and r["tokens"] > 0
    assert r["layout"]["tp"] == 2 and r["layout"]["world_size"] == 2 and r["rng_ranks"] == 2
    assert r["data"]["samples_seen"] > 0 and len(r["next_batch"]["sha256"]) == 64
    assert r["model_config"] == r["config"]["model"] and r["config"]["parallel"]["tp"] == 2
    full = ckpt.full_state_dict(path)
    expected = stacked_shapes(full)
    assert {t["name"]: t["shape"] for t in r["tensors"]} == expected
    assert expected["decoder.layers.self_attention.linear_qkv.weight"][0] == r["model_config"]["num_layers"]
    assert r["parameters"] == sum(v.numel() for v in full.values())
    assert all(t["dtype"] == "float32" and t["bytes"] == 4 * math.prod(t["shape"]) for t in r["tensors"])
    moments = {t["name"]: t["shape"] for t in r["optimizer_tensors"]}
    assert moments == {f"optim.{m}.{k}": s for m in ("exp_avg", "exp_avg_sq") for k, s in expected.items()}
    files = [p for p in path.rglob("*") if p.is_file()]
    assert r["size_bytes"]["total"] == sum(p.stat().st_size for p in files)
    assert r["size_bytes"]["dist"] == sum(p.stat().st_size for p in (path / "dist").rglob("*") if p.is_file())
    assert r["size_bytes"]["model.safetensors"] == 0 and r["problems"] == []

    text = inspect(path).stdout
    assert "sharded, complete" in text and "tp=2" in text and "optim.exp_avg_sq.*" in text
    qkv = [line for line in text.splitlines() if line.startswith("decoder.layers.self_attention.linear_qkv")]
    assert len(qkv) == 1 and "x".join(map(str, expected["decoder.layers.self_attention.linear_qkv.weight"])) in qkv[0]


def test_weights_only_checkpoint(tp2, tmp_path):
    _, path = tp2
    weights = tmp_path / "weights"
    shutil.copytree(path, weights, ignore=shutil.ignore_patterns("dist", "rng", "manifest.json"))
    full = ckpt.full_state_dict(path)
    save_file(full, str(weights / "model.safetensors"))
    ckpt.write_manifest(weights)
    r = inspect_json(weights)
    assert r["kind"] == "weights-only" and r["complete"] is True and r["tensor_source"] == "model.safetensors"
    assert {t["name"]: t["shape"] for t in r["tensors"]} == {k: list(v.shape) for k, v in full.items()}
    assert r["optimizer_tensors"] == [] and r["rng_ranks"] == 0 and r["step"] == 2


def test_damaged_checkpoint_is_reported_not_refused(tp2, tmp_path):
    _, path = tp2
    damaged = tmp_path / "step_00000002"
    shutil.copytree(path, damaged)
    shard = sorted((damaged / "dist").glob("*.distcp"))[-1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum sees it
    shard.write_bytes(bytes(data))
    r = inspect_json(damaged)
    assert r["complete"] is False and f"dist/{shard.name}" in r["reason"] and "sha256" in r["reason"]
    assert r["step"] == 2 and len(r["tensors"]) > 0  # the metadata is intact: still listed
    assert inspect_json(damaged, "--no-checksums")["complete"] is True


def test_partial_checkpoint_with_unsafe_metadata_is_inspected_without_unpickling(tp2, tmp_path):
    _, path = tp2
    partial = tmp_path / "step_00000003.tmp"
    shutil.copytree(path, partial, ignore=shutil.ignore_patterns("COMPLETE", "manifest.json"))
    canary = tmp_path / "unpickled"
    (partial / "dist" / ".metadata").write_bytes(
        b"cposix\nsystem\n(S'touch " + str(canary).encode() + b"'\ntR.")  # pickle protocol 0: os.system(...)
    r = inspect_json(partial)
    assert r["complete"] is False and "partial checkpoint" in r["reason"] and str(partial) in r["reason"]
    assert r["tensors"] == [] and len(r["problems"]) == 1 and "refusing to unpickle" in r["problems"][0]
    assert not canary.exists()


def test_bad_paths_exit_2_with_one_line(tmp_path):
    for bad in (tmp_path / "missing", tmp_path):  # does not exist; a directory that is no checkpoint
        res = inspect(bad, expect=2)
        assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1 and str(bad) in res.stderr
        assert "Traceback" not in res.stderr
