"""Loss by position, and the evaluation split over torchrun ranks.

Would catch: a bucket averaging the wrong positions, a prefix that shifts which passage tokens are
scored, a sample or window scored twice or dropped when ranks share the work, results that change with
the rank count or the batch size, a --compare whose models see different samples."""
import json
import socket

import pytest
import torch

from tapa_scale.eval.position import position_loss, prefix_loss
from tapa_scale.train.metrics import position_buckets
from tests.helpers import run_cli


def position_as_loss(x, y):
    """A fake model whose loss at window position t is t (and 1000 x the label, to catch shifts)."""
    return torch.arange(x.shape[1], dtype=torch.float64).expand(x.shape) + 0 * y


def test_buckets_cover_every_position_once():
    for length, n in ((128, 16), (100, 16), (5, 16)):
        buckets = position_buckets(length, n)
        assert [p for a, b in buckets for p in range(a, b)] == list(range(length))
        assert len(buckets) == min(n, length) and max(b - a for a, b in buckets) - min(b - a for a, b in buckets) <= 1


def test_position_loss_is_the_mean_over_each_bucket():
    texts = [torch.arange(1000), torch.arange(300)]
    out = position_loss(position_as_loss, texts, [64], windows=5, buckets=4, batch_size=2)
    # buckets [0,16) [16,32) [32,48) [48,64): the mean position in each, whatever the window
    assert out["position_loss"]["64"] == pytest.approx([7.5, 23.5, 39.5, 55.5])
    assert out["position_buckets"]["64"] == [[0, 16], [16, 32], [32, 48], [48, 64]]
    assert out["position_windows"]["64"] == 5


def test_prefix_loss_scores_the_same_passage_tokens_at_every_prefix():
    def label_loss(x, y):  # loss = the label itself: the passage's tokens 2..P must be what is averaged
        return y.double()
    passage, other = torch.arange(100, 110), torch.arange(50)
    out = prefix_loss(label_loss, passage, other, [0, 7, 40])
    assert out["prefix_loss"] == {k: pytest.approx(105.0) for k in ("0", "7", "40")}  # mean of 101..109
    assert out["prefix_passage_tokens"] == 10
    out = prefix_loss(lambda x, y: position_as_loss(x, y), passage, other, [0, 7])
    assert out["prefix_loss"] == {"0": pytest.approx(4.0), "7": pytest.approx(11.0)}  # positions k..k+8


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_and_other_batches_give_the_one_process_result(trained_run, tmp_path):
    """The tool on one process (batch 1) and under torchrun on two (batch 4, --compare with the step-3
    checkpoint): the same samples, accuracies, perplexities and losses by position for the final
    model; the second model's samples are token-identical; tables, CSVs and figures are written."""
    from tapa_scale.data import eval_documents

    texts = []
    for i, doc in enumerate(eval_documents()[:2]):  # two held-out documents, cut to keep the test short
        texts.append(tmp_path / f"doc{i}.txt")
        texts[-1].write_text(doc.read_text(encoding="utf-8")[10000:16000], encoding="utf-8")
    common = ["--tasks", "ppl,passkey,vt,position", "--lengths", "160,320", "--depths", "0,1", "--trials", "2",
              "--position-windows", "3", "--text", *map(str, texts)]
    one = tmp_path / "one.json"
    run_cli("tools/eval_long_context.py", "--checkpoint", str(trained_run), *common, "--batch-size", "1",
            "--json", str(one))
    two = tmp_path / "two.json"
    step3 = trained_run / "checkpoints" / "step_00000003"
    assert step3.is_dir(), sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    run_cli("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_port()), "tools/eval_long_context.py", "--compare", str(trained_run), str(step3),
            *common, "--batch-size", "4", "--json", str(two), "--plots", str(tmp_path / "figs"))
    a = json.loads(one.read_text())
    both = json.loads(two.read_text())
    b, early = both["models"][trained_run.name], both["models"]["step_00000003"]
    assert b["meta"]["ranks"] == 2 and a["meta"]["ranks"] == 1
    assert a["meta"]["samples_sha256"] == b["meta"]["samples_sha256"] == early["meta"]["samples_sha256"]
    assert a["passkey"] == b["passkey"] and a["ruler"] == b["ruler"]
    for key in ("ppl", "prefix_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    assert a["tokens"] == b["tokens"]
    for L in ("160", "320"):
        assert b["position_loss"][L] == pytest.approx(a["position_loss"][L], rel=1e-6)
    assert early["ppl"]["160"] != pytest.approx(b["ppl"]["160"], rel=1e-3)  # really another model
    for name in ("ppl_vs_length", "passkey_heatmap", "ruler_vs_length", "loss_by_position"):
        assert (tmp_path / "figs" / f"{name}.png").stat().st_size > 1000, name
    rows = (tmp_path / "two.position.csv").read_text().splitlines()
    assert rows[0] == "model,kind,length_or_prefix,start,end,loss"
    assert {r.split(",")[0] for r in rows[1:]} == {trained_run.name, "step_00000003"}
    assert f"| {trained_run.name} |" in two.with_suffix(".md").read_text()
