"""Calibration (scaling/calibrate.py): the latency/bandwidth fit against the cost model's own collective
formula, and one quick calibration of this machine read back as a hardware profile. Nothing here
asserts on how fast anything ran."""
import itertools
import json

import pytest
import torch

from tapa_scale.scaling import calibrate as cal
from tapa_scale.scaling.links import fit_latency_bandwidth
from tapa_scale.scaling.hardware import COLLECTIVES, Hardware, Link, from_json, load_hardware


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("kind", COLLECTIVES)
def test_fit_recovers_the_latency_and_bandwidth_of_the_cost_models_collective_time(kind, ranks):
    truth = Hardware(name="synthetic", peak_flops=1.0, memory_bytes=1.0, memory_bandwidth=1.0,
                     links={"intra": {k: Link(latency_s=7e-6, bandwidth=3e9) for k in COLLECTIVES}})
    points = [(2.0 ** p, truth.collective_time(kind, 2.0 ** p, ranks)) for p in range(12, 25, 3)]
    link = fit_latency_bandwidth(kind, ranks, points)
    assert link.latency_s == pytest.approx(7e-6, rel=1e-6)
    assert link.bandwidth == pytest.approx(3e9, rel=1e-6)


def test_fit_keeps_latency_non_negative_and_refuses_a_single_size():
    # times that extrapolate to a negative latency: refitted at latency 0
    link = fit_latency_bandwidth("send_recv", 2, [(1e3, 1e-6), (1e6, 2e-3)])
    assert link.latency_s == 0.0 and link.bandwidth > 0
    with pytest.raises(ValueError, match="2 distinct sizes"):
        fit_latency_bandwidth("all_reduce", 2, [(4096, 1e-4), (4096, 2e-4)])


def test_calibrate_refuses_one_process_before_measuring():
    with pytest.raises(ValueError, match="at least 2 processes"):
        cal.calibrate(processes=1)
    with pytest.raises(ValueError, match="hardware 'h900'"):  # one process copies a profile's links: named first
        cal.calibrate(processes=1, links_from="h900")


@pytest.fixture(scope="module")
def quick():
    lines = []
    threads = torch.get_num_threads()
    profile = cal.calibrate(quick=True, processes=2, log=lines.append)
    assert torch.get_num_threads() == threads  # the caller's thread count is restored
    return profile, lines


def test_quick_calibration_is_a_complete_profile(quick):
    profile, lines = quick
    assert lines and all(line.startswith("calibrate: ") for line in lines)
    again = from_json(json.loads(json.dumps(profile.to_json())))
    assert again == profile and again.calibrated and again.name == "cpu_t1" and again.device == "cpu"
    assert again.runtime_bytes > 100e6 and again.memory_bytes > again.runtime_bytes
    assert again.memory_bandwidth > 0 and again.op_overhead_s > 0 and again.peak_flops > 0
    assert 0 < again.gemm_efficiency and "not measured" in again.source

    ms, ns, ks, _ = cal.QUICK_GEMM_GRID
    assert sorted(tuple(row[:3]) for row in again.gemm_table) == sorted(itertools.product(ms, ns, ks))
    for m, n, k, rate in again.gemm_table:
        assert rate > 0
        assert again.gemm_time(m, n, k) == pytest.approx(2 * m * n * k / rate, rel=1e-12)

    assert set(again.attention) == {"reference/tapa", "reference/dot"}
    for entry in again.attention.values():
        head_dim, rows = cal.QUICK_ATTENTION
        assert entry["head_dim"] == head_dim
        assert [p[:2] for p in entry["points"]] == [[n, b * h] for b, h, lengths in rows for n in lengths]
        assert all(seconds > 0 for _, _, seconds in entry["points"])

    assert set(again.links) == {"intra", "inter"}
    for level in again.links.values():
        assert set(level) == set(COLLECTIVES)
        assert all(link.bandwidth > 0 and link.latency_s >= 0 for link in level.values())


def test_command_line_writes_a_profile_that_load_hardware_reads(quick, tmp_path, monkeypatch):
    asked = {}

    def measured(**kwargs):  # the quick run above stands in for a second measurement
        asked.update(kwargs)
        return quick[0]

    monkeypatch.setattr(cal, "calibrate", measured)
    out = tmp_path / "cpu.json"
    assert cal.main(["--out", str(out), "--quick", "--threads", "1", "--processes", "2", "--name", "here"]) == 0
    assert asked == dict(device="cpu", dtype="fp32", threads=1, processes=2, quick=True, name="here", links_from="")
    assert load_hardware(str(out)) == quick[0]


def test_command_line_reports_a_bad_argument_in_one_line(capsys):
    assert cal.main(["--out", "unused.json", "--processes", "1"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
