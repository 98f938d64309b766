"""User-data mistakes give one paragraph and a non-zero exit in every tool (also under --num-gpus 2);
bugs keep their traceback. Each case runs the real command line, as a user would."""
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision

from engine_utils import DEMO_CONFIG, REPO, TINY_OPTS, make_tiny_shapes

BAD_COCO_HINT = "image id 7"
_RUN_IDS = itertools.count()


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """A data sets root holding the shapes set plus a malformed COCO json (coco_2017_val), a malformed
    VOC xml (voc_2007_test) and an ImageNet folder without images (imagenet_train); and weights."""
    root = tmp_path_factory.mktemp("bad_root")
    make_tiny_shapes(str(root))
    (root / "coco" / "val2017").mkdir(parents=True)
    (root / "coco" / "annotations").mkdir()
    bad = {"images": [{"id": 7, "file_name": "a.jpg", "height": -3, "width": 10}], "annotations": [],
           "categories": [{"id": 1, "name": "thing"}]}
    (root / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(bad))
    voc = root / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000001\n")
    (voc / "Annotations" / "000001.xml").write_text("<annotation><size><width>5</width></size>")  # cut off
    (root / "imagenet" / "train" / "n01440764").mkdir(parents=True)  # a class folder, but no images
    weights = root / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    return {"root": str(root), "weights": str(weights), "out": str(tmp_path_factory.mktemp("out"))}


def _run(tool, args, roots, timeout=300):
    env = {**os.environ, "RESNET_DET_DATASETS": roots["root"], "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _one_paragraph(res, *needles):
    """Non-zero exit, no traceback, the key content in stderr, and the message as one paragraph."""
    assert res.returncode != 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-4000:]
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr[-3000:])
    message = res.stderr[res.stderr.rindex("error: "):].strip()
    assert "\n" not in message, message  # one paragraph
    return message


def _train(roots, *opts, extra=()):
    return ["--config-file", DEMO_CONFIG, *extra, *TINY_OPTS, "OUTPUT_DIR",
            os.path.join(roots["out"], f"run{next(_RUN_IDS)}"), "VIS.NUM_IMAGES", "0", *opts]


def test_train_malformed_coco_json(roots):
    res = _run("train_net.py", _train(roots, "DATASETS.TRAIN", "('coco_2017_val',)"), roots)
    _one_paragraph(res, "instances_val2017.json", BAD_COCO_HINT, "'height'")


def test_train_malformed_voc_xml(roots):
    res = _run("train_net.py", _train(roots, "DATASETS.TRAIN", "('voc_2007_test',)"), roots)
    _one_paragraph(res, "000001.xml", "malformed XML")


def test_eval_only_malformed_json_missing_dataset_missing_weights(roots, tmp_path):
    ev = ("MODEL.WEIGHTS", roots["weights"])
    res = _run("train_net.py", _train(roots, *ev, "DATASETS.TEST", "('coco_2017_val',)", extra=["--eval-only"]), roots)
    _one_paragraph(res, "instances_val2017.json", BAD_COCO_HINT)
    res = _run("train_net.py", _train(roots, *ev, "DATASETS.TEST", "('coco_2014_minival',)", extra=["--eval-only"]),
               roots)
    _one_paragraph(res, "coco_2014_minival", "README")
    res = _run("train_net.py", _train(roots, "MODEL.WEIGHTS", str(tmp_path / "gone.pth"), extra=["--eval-only"]), roots)
    _one_paragraph(res, "gone.pth", "convert_weights")
    res = _run("train_net.py", _train(roots, extra=["--eval-only"]), roots)  # no weights at all
    _one_paragraph(res, "--eval-only needs MODEL.WEIGHTS")


def test_visualize_malformed_json_missing_weights_bad_config(roots, tmp_path):
    base = ["--config-file", DEMO_CONFIG, "--output", str(tmp_path / "vis"), "MODEL.DEVICE", "cpu"]
    res = _run("visualize.py", ["--dataset", "coco_2017_val", *base, "MODEL.WEIGHTS", roots["weights"]], roots)
    _one_paragraph(res, "instances_val2017.json", BAD_COCO_HINT)
    res = _run("visualize.py", ["--dataset", "shapes_val", *base, "MODEL.WEIGHTS", str(tmp_path / "gone.pth")], roots)
    _one_paragraph(res, "gone.pth", "convert_weights")
    res = _run("visualize.py", ["--dataset", "shapes_val", *base, "MODEL.RESNETS.DEPTH", "42"], roots)
    _one_paragraph(res, "MODEL.RESNETS.DEPTH=42", "18, 34, 50, 101, 152")
    res = _run("visualize.py", ["--input", str(tmp_path / "no_photos"), *base], roots)
    _one_paragraph(res, "no_photos")


def test_pretrain_empty_imagenet_missing_dataset_missing_weights(roots, tmp_path):
    base = ["--config-file", os.path.join(REPO, "configs", "imagenet", "R-18.yaml"), "MODEL.DEVICE", "cpu",
            "OUTPUT_DIR", str(tmp_path / "cls"), "DATALOADER.NUM_WORKERS", "0", "INPUT.MEAN_MODE", "per_channel"]
    res = _run("pretrain_net.py", base, roots)  # imagenet/train has a class folder but no image
    _one_paragraph(res, "imagenet_train", "no images")
    res = _run("pretrain_net.py", [*base, "DATASETS.TRAIN", "('cifar10_train',)"], roots)
    _one_paragraph(res, "cifar10_train", "cifar-10-batches-py")
    res = _run("pretrain_net.py", [*base, "MODEL.WEIGHTS", str(tmp_path / "gone.pth")], roots)
    _one_paragraph(res, "gone.pth", "convert_weights")


def test_two_processes_report_a_worker_user_error_once(roots):
    """The malformed json is read inside the spawned workers; the parent prints their message once."""
    res = _run("train_net.py", _train(roots, "DATASETS.TRAIN", "('coco_2017_val',)", "MODEL.RESNETS.NORM",
                                      "FrozenBN", extra=["--num-gpus", "2"]), roots, timeout=400)
    msg = _one_paragraph(res, "instances_val2017.json", BAD_COCO_HINT)
    assert res.stderr.count(BAD_COCO_HINT) == 1, res.stderr[-3000:]
    assert "ProcessRaisedException" not in res.stderr and "ProcessExitedException" not in res.stderr, msg


def test_a_bug_still_shows_its_traceback(roots, tmp_path):
    """A plain ValueError from inside a loader is a bug, not a user error: traceback, exit status 1."""
    script = tmp_path / "buggy_train.py"
    argv = ["train_net.py", *_train(roots, "DATASETS.TRAIN", "('buggy_set',)")]
    script.write_text(
        "import runpy, sys\n"
        "from resnet_det.data import DatasetCatalog\n"
        "def broken():\n"
        "    raise ValueError('internal invariant broken')\n"
        "DatasetCatalog.register('buggy_set', broken)\n"
        f"sys.argv = {argv!r}\n"
        f"runpy.run_path({os.path.join(REPO, 'tools', 'train_net.py')!r}, run_name='__main__')\n")
    env = {**os.environ, "RESNET_DET_DATASETS": roots["root"], "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" in res.stderr and "internal invariant broken" in res.stderr


class _BadImages(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        from resnet_det.data.transforms import BadImageError

        raise BadImageError(f"img{i}.jpg: the image file is truncated")


def test_a_user_error_from_a_loader_worker_prints_its_own_message():
    """DataLoader workers re-raise with the worker's traceback inside the message; the paragraph
    printed is the original message only."""
    from resnet_det.utils.errors import UserInputError, user_message

    loader = torch.utils.data.DataLoader(_BadImages(), num_workers=1, batch_size=None)
    with pytest.raises(UserInputError) as e:
        next(iter(loader))
    assert "Traceback" in str(e.value)  # what torch puts around it
    assert user_message(e.value) == "img0.jpg: the image file is truncated"
