"""tools/d2_train_net.py without detectron2 installed: one paragraph on how to install it, no traceback
(--help exits 0; a run exits 2, as the other tools do for a user's mistake). detectron2 is hidden from
the child process by an import hook, so the test means the same where detectron2 is installed."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "d2_train_net.py")
WITHOUT_DETECTRON2 = """
import runpy, sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "detectron2" or name.startswith("detectron2."):
            raise ModuleNotFoundError("No module named 'detectron2'", name="detectron2")
sys.meta_path.insert(0, Hide())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", WITHOUT_DETECTRON2, TOOL, *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("args, rc", [(["--help"], 0),
                                      (["--config-file", "configs/detectron2/faster_rcnn_R_50_C4_coco.yaml"], 2)])
def test_without_detectron2_one_paragraph_says_how_to_install_it(args, rc):
    p = run(*args)
    text = p.stdout if rc == 0 else p.stderr
    assert p.returncode == rc, (p.stdout, p.stderr)
    assert "Traceback" not in p.stdout + p.stderr
    assert len(text.strip().splitlines()) == 1  # one paragraph
    assert "needs detectron2" in text and "pip install --no-build-isolation" in text
    assert "resnet_det/integrations/README.md" in text
