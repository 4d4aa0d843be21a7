"""The checkpoint directory format without training: manifest verification, fallback past broken
checkpoints with one line each, retention, and the refusal of unsafe pickles in dist metadata.

Would catch: a truncated or edited file accepted for resume, a broken newest checkpoint that stops a
run which could fall back, a checkpoint metadata file that runs code when read."""
import os
import pickle

import pytest

from tapa_scale.train import checkpoint as ckpt
from tapa_scale.train.sharded import UnsafeCheckpoint, check_metadata_pickle


def fake(run_dir, step, payload=b"x" * 100):
    tmp = ckpt.begin_save(run_dir, step)
    (tmp / "dist").mkdir()
    (tmp / "dist" / "__0_0.distcp").write_bytes(payload)
    (tmp / "dist" / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}}))
    (tmp / "state.json").write_text('{"step": %d}' % step)
    return ckpt.publish(tmp)


def test_corrupt_newest_falls_back_with_one_line(tmp_path):
    for s in (1, 2, 3):
        fake(tmp_path, s)
    newest = ckpt.checkpoint_dir(tmp_path, 3) / "dist" / "__0_0.distcp"
    newest.write_bytes(b"y" * 100)  # same size, different content: only the checksum sees it
    (tmp_path / "checkpoints" / "step_00000004.tmp").mkdir()
    lines = []
    chosen = ckpt.select_checkpoint(tmp_path, report=lines.append)
    assert chosen.name == "step_00000002"
    assert len(lines) == 2 and "step_00000004.tmp" in lines[0] and "step_00000003" in lines[1] and "sha256" in lines[1]
    assert ckpt.select_checkpoint(tmp_path, resume_from=1, report=lines.append).name == "step_00000001"
    with pytest.raises(ckpt.CorruptCheckpoint, match="step_00000003"):
        ckpt.select_checkpoint(tmp_path, resume_from=3, report=lines.append)


def test_missing_and_extra_files_are_refused(tmp_path):
    c = fake(tmp_path, 1)
    (c / "dist" / "__0_0.distcp").unlink()
    with pytest.raises(ckpt.CorruptCheckpoint, match="missing"):
        ckpt.verify(c)
    c = fake(tmp_path, 2)
    (c / "stray").write_text("?")
    with pytest.raises(ckpt.CorruptCheckpoint, match="not in the manifest"):
        ckpt.verify(c)


def test_keep_last_n(tmp_path):
    for s in (1, 2, 3, 4):
        fake(tmp_path, s)
    ckpt.prune(tmp_path, 2)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_metadata_pickle_with_code_is_refused(tmp_path):
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(UnsafeCheckpoint, match="refusing to unpickle"):
        check_metadata_pickle(tmp_path)
