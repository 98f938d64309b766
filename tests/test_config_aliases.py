"""Keys renamed with the same meaning keep working: MODEL.FUSE_FROZEN_BN -> MODEL.FUSE_CONV_BN_RELU and
MODEL.FAST_ROI_ALIGN -> MODEL.ROI_BOX_HEAD.POOLER_IMPL, from a config file (or its _BASE_) and from the
command line, each with one FutureWarning naming the new key. Keys renamed with a change of meaning
stay errors naming the new key."""
import os
import warnings

import pytest

from resnet_det.config import ALIASED_KEYS, RENAMED_KEYS, get_cfg
from resnet_det.engine.defaults import default_argument_parser, setup_cfg
from resnet_det.utils.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(REPO, "configs", "Base-RCNN-FPN.yaml")


def deprecations(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, FutureWarning)]


def test_old_keys_in_a_config_file_set_the_new_keys(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(f"_BASE_: {BASE}\nMODEL:\n  FUSE_FROZEN_BN: False\n  FAST_ROI_ALIGN: False\n")
    cfg = get_cfg()
    assert cfg.MODEL.FUSE_CONV_BN_RELU and cfg.MODEL.ROI_BOX_HEAD.POOLER_IMPL == "gather"  # the defaults
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cfg.merge_from_file(str(old))
    assert cfg.MODEL.FUSE_CONV_BN_RELU is False and cfg.MODEL.ROI_BOX_HEAD.POOLER_IMPL == "torchvision"
    assert "FUSE_FROZEN_BN" not in cfg.MODEL and "FAST_ROI_ALIGN" not in cfg.MODEL
    msgs = deprecations(record)
    assert len(msgs) == 2, msgs
    assert all(str(old) in m for m in msgs)
    assert any("MODEL.FUSE_FROZEN_BN is deprecated" in m and "rename it to MODEL.FUSE_CONV_BN_RELU" in m for m in msgs)
    assert any("MODEL.FAST_ROI_ALIGN is deprecated" in m and "MODEL.ROI_BOX_HEAD.POOLER_IMPL='torchvision'" in m
               for m in msgs)
    assert "FUSE_CONV_BN_RELU: false" in cfg.dump() and "FAST_ROI_ALIGN" not in cfg.dump()  # config.yaml: new keys


def test_old_keys_on_the_command_line_set_the_new_keys(tmp_path):
    args = default_argument_parser().parse_args(
        ["--config-file", BASE, "MODEL.FAST_ROI_ALIGN", "False", "MODEL.FUSE_FROZEN_BN", "False",
         "OUTPUT_DIR", str(tmp_path)])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cfg = setup_cfg(args, adopt_weights=False)  # what tools/train_net.py does with its arguments
    assert cfg.MODEL.FUSE_CONV_BN_RELU is False and cfg.MODEL.ROI_BOX_HEAD.POOLER_IMPL == "torchvision"
    msgs = deprecations(record)
    assert len(msgs) == 2 and all(m.startswith("command line: config key MODEL.") for m in msgs), msgs
    cfg = get_cfg()
    with pytest.warns(FutureWarning, match="POOLER_IMPL='gather'"):
        cfg.merge_from_list(["MODEL.FAST_ROI_ALIGN", True])  # a Python value, as code passes it
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_IMPL == "gather"


def test_an_old_key_in_a_base_file_yields_to_the_new_key_of_the_file_that_uses_it(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(f"_BASE_: {BASE}\nMODEL:\n  FAST_ROI_ALIGN: True\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {base}\nMODEL:\n  ROI_BOX_HEAD:\n    POOLER_IMPL: torchvision\n")
    cfg = get_cfg()
    with pytest.warns(FutureWarning, match="base.yaml: config key MODEL.FAST_ROI_ALIGN"):
        cfg.merge_from_file(str(child))
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_IMPL == "torchvision"


@pytest.mark.parametrize("text, message", [
    ("MODEL:\n  FAST_ROI_ALIGN: maybe\n", "MODEL.FAST_ROI_ALIGN='maybe': expected True or False"),
    ("MODEL:\n  FUSE_FROZEN_BN: True\n  FUSE_CONV_BN_RELU: False\n",
     "gives both MODEL.FUSE_FROZEN_BN and its new name MODEL.FUSE_CONV_BN_RELU"),
    ("MODEL:\n  PARALLEL_ROI_ALIGN: True\n", "renamed to 'MODEL.ROI_BOX_HEAD.POOLER_IMPL'"),
])
def test_mistakes_with_old_keys_are_clear(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises((ConfigError, KeyError), match=message):
            get_cfg().merge_from_file(str(path))


def test_every_old_name_leads_to_a_key_that_exists():
    known = get_cfg()
    for old, new in {**RENAMED_KEYS, **{k: v[0] for k, v in ALIASED_KEYS.items()}}.items():
        node = known
        for part in new.split("."):
            assert part in node, f"{old} -> {new}: no such key"
            node = node[part]
