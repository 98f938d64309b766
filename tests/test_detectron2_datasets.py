"""resnet_det's data sets in detectron2's catalogs (integrations/d2_datasets.py).

detectron2 is not installed here: FakeDatasetCatalog / FakeMetadataCatalog below are a MINIMAL FAKE of
the part of detectron2's API the registration uses (detectron2/data/catalog.py: DatasetCatalog.register /
list / get / __contains__, MetadataCatalog.get(name) -> Metadata with .set() that refuses to change a
value, attribute access raising AttributeError), labelled as such. Where detectron2 is importable, the
last test runs the real module against detectron2's own catalogs.
"""
import importlib.util
import logging

import pytest

from resnet_det.data import DatasetCatalog, MetadataCatalog, register_all_builtins, register_coco_instances
from resnet_det.data.catalog import unregister
from resnet_det.data.demo import generate_shapes_dataset
from resnet_det.integrations.d2_datasets import register_in_detectron2

XYXY_ABS = "BoxMode.XYXY_ABS (fake)"  # detectron2's enum member; the fake only carries it through


class FakeDatasetCatalog(dict):
    """FAKE of detectron2.data.DatasetCatalog (a UserDict of name -> loader)."""

    def register(self, name, func):
        assert callable(func) and name not in self, f"Dataset '{name}' is already registered!"
        self[name] = func

    def get(self, name):
        return self[name]()

    def list(self):
        return list(self.keys())


class FakeMetadata:
    """FAKE of detectron2.data.catalog.Metadata: setting a different value for a key is refused."""

    def __init__(self, name):
        object.__setattr__(self, "name", name)

    def __getattr__(self, key):
        raise AttributeError(f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}'")

    def __setattr__(self, key, value):
        old = self.__dict__.get(key, value)
        assert old == value, f"Attribute '{key}' in the metadata of '{self.name}' cannot be set to a different value"
        object.__setattr__(self, key, value)

    def set(self, **kwargs):
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self


class FakeMetadataCatalog(dict):
    """FAKE of detectron2.data.MetadataCatalog: get() creates the entry."""

    def get(self, name):
        if name not in self:
            self[name] = FakeMetadata(name)
        return self[name]


@pytest.fixture
def d2_catalogs(datasets_root):
    register_all_builtins(str(datasets_root))  # our built-ins under the test's own root
    yield FakeDatasetCatalog(), FakeMetadataCatalog()
    register_all_builtins()


def test_builtin_and_shapes_sets_become_detectron2_data_sets(d2_catalogs, datasets_root):
    datasets, metadata = d2_catalogs
    generate_shapes_dataset(str(datasets_root / "shapes"), num_train=3, num_val=2)
    registered = register_in_detectron2(datasets, metadata, XYXY_ABS)
    assert {"shapes_train", "shapes_val", "coco_2017_val", "voc_2007_test"} <= set(registered)
    assert set(registered) == set(DatasetCatalog.list())
    # VOC: detectron2's evaluator name and the fields its PascalVOCDetectionEvaluator reads.
    voc = metadata.get("voc_2007_test")
    assert (voc.evaluator_type, voc.year, voc.split) == ("pascal_voc", 2007, "test") and len(voc.thing_classes) == 20
    # Loading is lazy and goes through our loader; boxes stay XYXY, now labelled so for detectron2.
    dicts = datasets.get("shapes_val")
    ours = DatasetCatalog.get("shapes_val")
    assert len(dicts) == len(ours) == 2 and dicts[0]["file_name"] == ours[0]["file_name"]
    ann = dicts[0]["annotations"][0]
    assert ann["bbox_mode"] == XYXY_ABS and ann["bbox"] == ours[0]["annotations"][0]["bbox"]
    meta = metadata.get("shapes_val")
    assert meta.evaluator_type == "coco" and meta.json_file == MetadataCatalog.get("shapes_val").json_file
    assert meta.thing_classes == MetadataCatalog.get("shapes_val").thing_classes


def test_user_registered_coco_json_is_registered_on_demand_with_its_classes(d2_catalogs, datasets_root):
    datasets, metadata = d2_catalogs
    register_in_detectron2(datasets, metadata, XYXY_ABS)  # at import time: "my_set" does not exist yet
    root = generate_shapes_dataset(str(datasets_root / "mine"), num_train=2, num_val=1)
    register_coco_instances("my_set", {}, f"{root}/annotations/instances_val.json", f"{root}/val")
    try:
        assert "my_set" not in datasets
        assert register_in_detectron2(datasets, metadata, XYXY_ABS, ["my_set", "coco_2017_val", "nope"]) == ["my_set"]
        assert not hasattr(metadata.get("my_set"), "thing_classes")  # a COCO json's classes come with loading
        dicts = datasets.get("my_set")
        assert len(dicts) == 1
        assert metadata.get("my_set").thing_classes == MetadataCatalog.get("my_set").thing_classes
        assert metadata.get("my_set").thing_dataset_id_to_contiguous_id
    finally:
        unregister("my_set")


def test_detectron2s_own_registration_is_kept_and_a_different_location_is_named(d2_catalogs, caplog):
    datasets, metadata = d2_catalogs
    datasets.register("coco_2017_val", lambda: [])
    metadata.get("coco_2017_val").set(json_file="/elsewhere/instances_val2017.json", evaluator_type="coco")
    with caplog.at_level(logging.WARNING):
        registered = register_in_detectron2(datasets, metadata, XYXY_ABS, ["coco_2017_val"])
    assert registered == [] and datasets.get("coco_2017_val") == []
    assert "detectron2 registers its own" in caplog.text and "DETECTRON2_DATASETS" in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is None, reason="detectron2 is not installed")
def test_real_detectron2_catalogs_get_our_data_sets():
    import detectron2.data as d2data

    import resnet_det.integrations.detectron2 as plugin

    assert "shapes_val" in d2data.DatasetCatalog.list()
    assert d2data.MetadataCatalog.get("shapes_val").evaluator_type == "coco"
    assert plugin.register_resnet_det_datasets(["shapes_val"]) == []  # already there: nothing twice
