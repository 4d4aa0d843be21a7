"""The GPU image: the Dockerfile names only pinned versions — the Python 3.12 lock's, less what the
NVIDIA image owns — and never installs torch; its entrypoint runs preflight and the launcher on CPU.
(Docker itself cannot run here.)"""
import re
import subprocess
import sys

from dist_harness import REPO, rank_env

sys.path.insert(0, str(REPO / "docker"))
from filter_lock import filter_lock  # noqa: E402

LOCK = (REPO / "launch/requirements-py312.lock").read_text()


def test_dockerfile_pins_its_base_and_installs_only_pinned_packages():
    text = (REPO / "docker/Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base)  # a dated tag, never latest
    installs = re.findall(r"pip install ([^\n\\&;]+)", text)
    assert len(installs) == 3
    for args in installs:
        words = [w for w in args.split() if not w.startswith("--")]
        assert words in (["-r", "/tmp/requirements.txt"], ["-e", "."], ['"flash-attn==${FLASH_ATTN}"']), words
        assert "--no-deps" in args  # nothing resolved: the image's torch cannot be replaced
    assert "docker/filter_lock.py launch/requirements-py312.lock /etc/pip/constraint.txt" in text


def test_the_image_installs_the_locks_pins_less_the_torch_family_and_the_images_constraints(tmp_path):
    lock = {line for line in LOCK.splitlines() if line and not line.startswith("#")}
    kept = set(filter_lock(LOCK, set()))
    dropped = {line.split("==")[0] for line in lock - kept}
    assert kept < lock and {"torch", "torchvision", "triton"} <= dropped
    assert all(d.startswith("nvidia-") or d in ("torch", "torchvision", "triton") for d in dropped)
    assert {"megatron-core", "mosaicml-streaming", "transformers"} <= {k.split("==")[0] for k in kept}
    constraints = tmp_path / "constraint.txt"
    constraints.write_text("numpy==1.26.4\nPyYAML==6.0.1  # the image's\n")
    out = subprocess.run([sys.executable, str(REPO / "docker/filter_lock.py"), str(REPO / "launch/requirements-py312.lock"),
                          str(constraints)], capture_output=True, text=True, check=True).stdout.split()
    assert set(out) == {k for k in kept if k.split("==")[0].lower() not in ("numpy", "pyyaml")}


def test_entrypoint_runs_preflight_and_the_launcher_on_cpu(tmp_path):
    env = rank_env(TAPA_ROOT=REPO, TAPA_SYSTEM_PYTHON=1, NPROC_PER_NODE=1)
    proc = subprocess.run(["bash", str(REPO / "docker/entrypoint.sh"), "preflight", "--config", "configs/tiny.yaml",
                           f"run.dir={tmp_path}", "--size-mb", "1", "--iters", "1"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preflight: 1 ranks" in proc.stdout and "[setup]" not in proc.stdout + proc.stderr  # no .venv made
    dry = subprocess.run(["bash", str(REPO / "docker/entrypoint.sh"), "train", "--config", "configs/tiny.yaml"],
                         env=dict(env, TAPA_DRY_RUN="1"), capture_output=True, text=True, timeout=60, check=True)
    assert dry.stdout.strip().endswith("--standalone -m tapa_scale.train --config configs/tiny.yaml")
    assert "-m tapa_scale.preflight --config configs/tiny.yaml && " in dry.stdout
