"""pyproject.toml's lower bounds cover the APIs the code uses, and the installed set is the lock's."""
import inspect
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

# API the code uses -> (distribution, the release that introduced it), from the projects' release notes.
INTRODUCED = {
    "torch.nn.utils.get_total_norm": ("torch", "2.6"),          # parallel/parallelize.py
    "torch.nn.utils.clip_grads_with_norm_": ("torch", "2.6"),   # parallel/parallelize.py
    "scaled_dot_product_attention(enable_gqa=)": ("torch", "2.5"),  # ops/attention.py
    "transformers.cache_utils.DynamicCache": ("transformers", "4.36"),  # hf/modeling_tapa.py
}


def _requirements() -> dict[str, Requirement]:
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    reqs = [Requirement(s) for s in re.findall(r'"([^"]+)"', deps)]
    return {r.name: r for r in reqs}


def _lower(req: Requirement) -> Version:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert bounds, f"pyproject.toml: {req} has no lower bound"
    return max(bounds)


def test_lower_bounds_cover_the_apis_used():
    """Catches a bound like torch>=2.4 under code that calls 2.6 APIs."""
    reqs = _requirements()
    for api, (dist, since) in INTRODUCED.items():
        assert _lower(reqs[dist]) >= Version(since), f"pyproject.toml: {reqs[dist]} but {api} needs {dist}>={since}"


def test_megatron_bound_is_the_version_the_cpu_layer_was_tested_with():
    """The CPU path refuses any megatron-core but the tested one, and the GPU path warns about it; a lower
    bound below it would promise what nothing checked."""
    from tapa_scale.parallel.cpu_compat import TESTED_VERSIONS

    assert _lower(_requirements()["megatron-core"]) == min(Version(v) for v in TESTED_VERSIONS)


def test_the_apis_exist_in_the_installed_versions():
    """Catches a table entry naming an API the code no longer finds."""
    import torch
    import transformers.cache_utils

    assert callable(torch.nn.utils.get_total_norm) and callable(torch.nn.utils.clip_grads_with_norm_)
    assert "enable_gqa" in torch.nn.functional.scaled_dot_product_attention.__doc__
    assert inspect.isclass(transformers.cache_utils.DynamicCache)


def test_installed_versions_satisfy_pyproject_and_equal_the_lock():
    """Catches a .venv (or lock) that drifted from what pyproject.toml and the lock say."""
    lock = ROOT / "launch" / f"requirements-py3{sys.version_info[1]}.lock"
    if not lock.exists():
        pytest.skip(f"no lock for Python 3.{sys.version_info[1]}")
    pins = dict(line.strip().lower().replace("_", "-").split("==") for line in lock.read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    for name, req in _requirements().items():
        installed = metadata.version(name)
        assert req.specifier.contains(installed, prereleases=True), f"installed {name}=={installed}, pyproject wants {req}"
        assert Version(pins[name.lower()]) == Version(installed), f"installed {name}=={installed}, {lock.name} pins {pins[name.lower()]}"


def test_the_312_lock_is_the_311_lock_plus_setuptools():
    """Catches the two locks drifting apart (3.12 must run the set the CPU layer was tested with)."""
    def read(name):
        return {line.split("==")[0]: line.split("==")[1] for line in (ROOT / "launch" / name).read_text().split()
                if "==" in line and not line.startswith("#")}
    py311, py312 = read("requirements-py311.lock"), read("requirements-py312.lock")
    assert py312.pop("setuptools", None) and py312 == py311
