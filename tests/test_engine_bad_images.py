"""A corrupt image under ON_BAD_IMAGE=skip is listed, counted in metrics.json, and training goes on;
under "error" it stops with the file name."""
import json

import pytest

from resnet_det.data import generate_shapes_dataset, register_all_builtins
from resnet_det.engine import Trainer
from resnet_det.engine.defaults import seed_all

from engine_utils import tiny_cfg


@pytest.fixture
def broken_root(tmp_path):
    root = tmp_path / "datasets"
    generate_shapes_dataset(str(root / "shapes"), num_train=6, num_val=2, seed=1)
    victim = sorted((root / "shapes" / "train").iterdir())[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 4])  # truncated file
    register_all_builtins(str(root))
    yield root, victim
    register_all_builtins()


def test_skip_policy_counts_and_lists(broken_root, tmp_path):
    _, victim = broken_root
    out = tmp_path / "out"
    cfg = tiny_cfg(str(out), "SOLVER.MAX_ITER", 6, "DATASETS.TEST", "()", "DATALOADER.ON_BAD_IMAGE", "skip")
    seed_all(0)
    Trainer(cfg).train()
    listed = open(out / "skipped_images.txt").read()
    assert victim.name in listed
    last = [json.loads(x) for x in open(out / "metrics.json")][-1]
    assert last["skipped_images"] == 1 and last["iteration"] == 5


def test_error_policy_names_the_file(broken_root, tmp_path):
    _, victim = broken_root
    cfg = tiny_cfg(str(tmp_path / "out"), "SOLVER.MAX_ITER", 6, "DATASETS.TEST", "()")
    seed_all(0)
    with pytest.raises(Exception, match=victim.name):
        Trainer(cfg).train()
