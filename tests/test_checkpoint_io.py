"""Weight files: detectron2 / MSRA pickles, torch files, the meta record, errors."""
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision

from resnet_det.checkpoint import (check_meta, convert_state_dict, default_meta, load_backbone_weights,
                                   meta_mismatches, read_checkpoint, save_detectron2_pkl, save_resnet_det)
from resnet_det.config import get_cfg
from resnet_det.utils.io import atomic_write


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_detectron2_pickle_round_trip(tmp_path, r18):
    d2, _ = convert_state_dict(r18, "torchvision", "detectron2")
    path = tmp_path / "r18.pkl"
    save_detectron2_pkl(path, d2, default_meta("torchvision"))
    with open(path, "rb") as f:  # the raw format detectron2's checkpointer reads
        raw = pickle.load(f)
    assert raw["__author__"] == "resnet_det" and raw["matching_heuristics"] is True
    assert all(isinstance(v, np.ndarray) for v in raw["model"].values())
    assert raw["model"]["res2.0.conv1.weight"].shape == (64, 64, 3, 3)
    sd, meta = read_checkpoint(path)
    assert meta == default_meta("torchvision")
    assert set(sd) == set(d2) and all(torch.equal(sd[k], d2[k]) for k in d2)
    tv, meta, report = load_backbone_weights(path)
    assert report.unmatched == [] and all(torch.equal(tv[k], r18[k]) for k in r18)
    assert not [p for p in os.listdir(tmp_path) if p != "r18.pkl"]  # no temp file left behind


@pytest.mark.parametrize("protocol", [2, 5])
def test_msra_blobs_pickle(tmp_path, r18, protocol):
    msra, _ = convert_state_dict(r18, "torchvision", "msra")
    blobs = {k: v.numpy() for k, v in msra.items()}
    blobs["res2_0_branch2a_w_momentum"] = np.zeros(1, np.float32)  # Detectron training leftovers
    with open(tmp_path / "R-18.pkl", "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=protocol)
    tv, meta, report = load_backbone_weights(tmp_path / "R-18.pkl")
    assert meta == default_meta("msra") and meta["input_format"] == "BGR" and meta["stride_in_1x1"]
    assert report.unmatched == ["res2_0_branch2a_w_momentum"]
    assert torch.equal(tv["layer1.0.conv1.weight"], r18["layer1.0.conv1.weight"])
    assert torch.equal(tv["layer1.0.bn1.running_mean"], torch.zeros(64))


def test_flat_numpy_pickle_and_torch_wrappers(tmp_path, r18):
    with open(tmp_path / "flat.pkl", "wb") as f:
        pickle.dump({k: v.numpy() for k, v in r18.items()}, f)
    torch.save({"state_dict": {f"module.{k}": v for k, v in r18.items()}}, tmp_path / "ddp.pth")
    for name in ("flat.pkl", "ddp.pth"):
        sd, meta = read_checkpoint(tmp_path / name)
        assert meta is None and set(sd) == set(r18)
        assert torch.equal(sd["fc.weight"], r18["fc.weight"])


def test_resnet_det_checkpoint_keeps_meta(tmp_path, r18):
    meta = default_meta("msra")
    save_resnet_det(tmp_path / "w.pth", r18, meta)
    raw = torch.load(tmp_path / "w.pth", weights_only=True)
    assert set(raw) == {"model", "meta"} and raw["meta"] == meta
    sd, read_meta = read_checkpoint(tmp_path / "w.pth")
    assert read_meta == meta and torch.equal(sd["conv1.weight"], r18["conv1.weight"])


def test_default_meta_values():
    tv, msra = default_meta("torchvision"), default_meta("msra")
    assert (tv["input_format"], tv["stride_in_1x1"]) == ("RGB", False)
    assert tv["pixel_mean"] == [123.675, 116.28, 103.53] and tv["pixel_std"] == [58.395, 57.12, 57.375]
    assert (msra["input_format"], msra["stride_in_1x1"]) == ("BGR", True)
    assert msra["pixel_mean"] == [103.53, 116.28, 123.675] and msra["pixel_std"] == [1, 1, 1]
    # The same statistics, in each format's channel order.
    assert tv["pixel_mean"] == msra["pixel_mean"][::-1]
    with pytest.raises(ValueError, match="convention='caffe'"):
        default_meta("caffe")


def test_bad_meta_is_named():
    meta = default_meta("torchvision")
    with pytest.raises(ValueError, match="input_format='YUV'"):
        check_meta({**meta, "input_format": "YUV"})
    with pytest.raises(ValueError, match=r"missing keys \['norm'\]"):
        check_meta({k: v for k, v in meta.items() if k != "norm"})


def test_meta_mismatches_say_what_to_set():
    cfg = get_cfg()  # defaults: BGR, torchvision's std in BGR order, stride in the 3x3
    assert meta_mismatches({**default_meta("torchvision"), "input_format": "BGR",
                            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
                            "pixel_std": list(cfg.MODEL.PIXEL_STD)}, cfg) == []
    found = meta_mismatches(default_meta("msra"), cfg)
    assert len(found) == 2  # std and stride; format and mean already agree
    assert any("MODEL.PIXEL_STD" in m and "[1.0, 1.0, 1.0]" in m for m in found)
    assert any("set MODEL.RESNETS.STRIDE_IN_1X1 True" in m for m in found)
    assert "set INPUT.FORMAT RGB" in meta_mismatches(default_meta("torchvision"), cfg)[0]


def test_missing_file_error_says_path_formats_and_remedy(tmp_path):
    path = str(tmp_path / "R-50.pkl")
    with pytest.raises(FileNotFoundError) as e:
        read_checkpoint(path)
    text = str(e.value)
    assert path in text and ".pkl" in text and ".pth" in text
    assert torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url in text
    assert "load_state_dict_from_url" in text and "tools/convert_weights.py" in text
    assert "\n" not in text  # one paragraph


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def test_pickles_with_code_are_refused(tmp_path):
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": {"x": _Payload()}}, f)
    with pytest.raises(ValueError, match="refusing to unpickle .*system.*trusted=True"):
        read_checkpoint(tmp_path / "evil.pkl")


def test_failed_write_keeps_the_old_file(tmp_path, r18):
    path = tmp_path / "w.pth"
    save_resnet_det(path, r18, default_meta("torchvision"))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="input_format"):
        save_resnet_det(path, r18, {**default_meta("torchvision"), "input_format": "?"})

    def crash_half_way(tmp):
        with open(tmp, "wb") as f:
            f.write(before[:100])
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash_half_way)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["w.pth"]
