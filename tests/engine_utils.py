"""Shared set-up for engine tests: a tiny shapes set and a tiny, fast detector config."""
import contextlib
import importlib.util
import os
import runpy
import subprocess
import sys

from resnet_det.config import get_cfg
from resnet_det.data import generate_shapes_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "frcnn_r18_fpn_shapes.yaml")
TINY_OPTS = [
    "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.REFERENCE_BATCH", "2", "SOLVER.WARMUP_ITERS", "2", "SOLVER.BASE_LR", "0.01",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "LOG_PERIOD", "1", "VIS.NUM_IMAGES", "1", "TEST.EVAL_PERIOD", "0",
    "SOLVER.STEPS", "(1000,)",
]


def make_tiny_shapes(root: str) -> str:
    """A 12-train / 4-val shapes set where the built-in catalog looks for it ($root/shapes)."""
    dirname = os.path.join(root, "shapes")
    if not os.path.isdir(dirname):
        generate_shapes_dataset(dirname, num_train=12, num_val=4, seed=0)
    return root


def tiny_cfg(output_dir: str, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(DEMO_CONFIG)
    cfg.merge_from_list(TINY_OPTS + ["OUTPUT_DIR", output_dir, *map(str, opts)])
    return cfg


def run_train_net(args, env_root: str, timeout=300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESNET_DET_DATASETS": env_root, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)


def load_tool(name: str):
    """tools/<name>.py as a module (its main() and helpers; its __main__ block does not run)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def run_tool(name: str, argv: list, capsys) -> tuple:
    """tools/<name>.py in this process, as its __main__ runs it: (exit status, stdout, stderr)."""
    tool = runpy.run_path(os.path.join(REPO, "tools", f"{name}.py"))
    try:
        tool["exit_on_user_error"](tool["main"], argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@contextlib.contextmanager
def registered_shapes(root: str, name: str, num_train: int, num_val: int, seed: int):
    """A generated shapes set at `root` whose train split is registered as `name` while the block runs."""
    from resnet_det.data import register_coco_instances
    from resnet_det.data.catalog import unregister

    generate_shapes_dataset(root, num_train=num_train, num_val=num_val, seed=seed)
    register_coco_instances(name, {}, os.path.join(root, "annotations", "instances_train.json"),
                            os.path.join(root, "train"))
    try:
        yield root
    finally:
        unregister(name)
