"""Training checkpoints on fvcore's Checkpointer (resnet_det.checkpoint.Checkpointer): fvcore's
last_checkpoint pointer with our skip-unreadable resume, atomic pointer writes, and a resume into
another model refused as a user error. Exact resume of whole runs: tests/test_engine_training.py."""
import os

import pytest
import torch

from resnet_det.checkpoint import Checkpointer
from resnet_det.checkpoint.checkpointer import newest_checkpoint
from resnet_det.utils.errors import WeightsError


def _net(out=1):
    torch.manual_seed(out)
    return torch.nn.Linear(2, out)


def test_pointer_then_iterations_and_unreadable_ones_are_skipped(tmp_path, caplog):
    ck = Checkpointer(_net(), str(tmp_path), meta={"source": "test"})
    for it in (1, 3):
        ck.save(f"model_{it:07d}", iteration=it)
    ck.save("model_best", iteration=1)
    # fvcore's pointer names the last save; the best model is kept aside, training continues from the latest.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert [os.path.basename(p) for p in ck.candidates()] == ["model_0000003.pth", "model_0000001.pth"]
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "model_0000003.pth",
                                            "model_best.pth"]  # no temp file left behind
    (tmp_path / "model_0000003.pth").write_bytes(b"cut short")
    path, state = newest_checkpoint(str(tmp_path))
    assert os.path.basename(path) == "model_0000001.pth" and state["iteration"] == 1
    assert state["meta"] == {"source": "test"} and "Skipping unreadable checkpoint" in caplog.text
    # A pointer to a file that is gone: the files by iteration decide.
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    assert os.path.basename(newest_checkpoint(str(tmp_path))[0]) == "model_0000001.pth"


def test_resume_restores_the_model_and_its_checkpointables(tmp_path):
    src = _net()
    opt = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    src(torch.ones(1, 2)).sum().backward()
    opt.step()
    # Saved through a DataParallel wrapper: the inner model's names, as DDP's would be.
    Checkpointer(torch.nn.DataParallel(src), str(tmp_path), optimizer=opt, scheduler=None).save(
        "model_0000004", iteration=4)
    dst = _net(1)
    torch.nn.init.zeros_(dst.weight)
    dst_opt = torch.optim.SGD(dst.parameters(), lr=0.1, momentum=0.9)
    ck = Checkpointer(dst, str(tmp_path), optimizer=dst_opt)
    state = ck.resume()
    assert state["iteration"] == 4 and ck.resumed_from == str(tmp_path / "model_0000004.pth")
    assert torch.equal(dst.weight, src.weight)
    momentum = [o.state_dict()["state"][0]["momentum_buffer"] for o in (opt, dst_opt)]
    assert torch.equal(*momentum)


def test_resume_into_another_model_is_one_clear_error(tmp_path):
    Checkpointer(_net(1), str(tmp_path)).save("model_0000002", iteration=2)
    with pytest.raises(WeightsError, match=r"model_0000002.pth does not fit the model.*other shapes.*weight"):
        Checkpointer(_net(3), str(tmp_path)).resume()


def test_no_checkpoint_no_folder(tmp_path):
    assert newest_checkpoint(str(tmp_path / "never_made")) == (None, None)
    assert Checkpointer(_net(), str(tmp_path / "never_made")).resume() is None
