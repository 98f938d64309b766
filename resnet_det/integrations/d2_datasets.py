"""resnet_det's data sets in detectron2's catalogs: `shapes_*`, `coco_*` / `voc_*` under
$RESNET_DET_DATASETS and anything registered with `resnet_det.data` become usable by name in
tools/d2_train_net.py or any detectron2 script, with no extra code.

Nothing here imports detectron2: its DatasetCatalog, MetadataCatalog and BoxMode.XYXY_ABS are passed
in (integrations/detectron2.py passes detectron2's own), so this logic is tested without detectron2.
"""
from __future__ import annotations

import functools
import logging

logger = logging.getLogger(__name__)

# Our evaluator_type -> detectron2's (its tools/train_net.py picks evaluators by these names).
EVALUATOR_TYPES = {"coco": "coco", "voc": "pascal_voc"}
# Metadata keys that say where a data set's files are, to notice two registrations of one name.
_LOCATION_KEYS = ("json_file", "image_root", "dirname")


def to_detectron2_dicts(dicts: list[dict], xyxy_abs) -> list[dict]:
    """Our dataset dicts (docs/CONTRACTS.md: boxes XYXY in absolute pixels, contiguous category ids)
    as detectron2 reads them: the same fields plus each annotation's `bbox_mode`."""
    return [{**d, "annotations": [{**a, "bbox_mode": xyxy_abs} for a in d.get("annotations", [])]}
            for d in dicts]


def _metadata(name: str) -> dict:
    """Our metadata of `name`, with detectron2's evaluator_type names."""
    from ..data import MetadataCatalog

    meta = {k: v for k, v in MetadataCatalog.get(name).as_dict().items() if k != "name"}
    if "evaluator_type" in meta:
        meta["evaluator_type"] = EVALUATOR_TYPES.get(meta["evaluator_type"], meta["evaluator_type"])
    return meta


def _load(name: str, xyxy_abs, d2_metadata) -> list[dict]:
    from ..data import DatasetCatalog

    dicts = to_detectron2_dicts(DatasetCatalog.get(name), xyxy_abs)
    # A COCO json's loader sets thing_classes and the category id map when it runs: pass them on.
    theirs = d2_metadata.get(name)
    theirs.set(**{k: v for k, v in _metadata(name).items() if getattr(theirs, k, None) is None})
    return dicts


def register_in_detectron2(d2_datasets, d2_metadata, xyxy_abs, names=None) -> list[str]:
    """Register our data sets `names` (default: all of them) in detectron2's catalogs; returns the
    names registered now. A name detectron2 already has keeps detectron2's registration (its own
    built-ins use the same coco/ and VOC20xx/ layouts under $DETECTRON2_DATASETS); a warning says
    when the two point at different files. Names we do not know are left for detectron2 to report.
    Loading stays lazy: our loader runs when detectron2 asks for the dicts."""
    from ..data import DatasetCatalog, datasets_root

    registered = []
    for name in DatasetCatalog.list() if names is None else names:
        if name not in DatasetCatalog:
            continue
        ours = _metadata(name)
        if name in d2_datasets.list():
            theirs = d2_metadata.get(name)
            moved = {k: (getattr(theirs, k, None), ours[k]) for k in _LOCATION_KEYS
                     if k in ours and getattr(theirs, k, ours[k]) != ours[k]}
            if moved:
                logger.warning("data set %r: detectron2 registers its own (%s), which it keeps using; "
                               "resnet_det's is %s. To use the same files, set DETECTRON2_DATASETS to %s",
                               name, ", ".join(f"{k}={v[0]}" for k, v in moved.items()),
                               ", ".join(f"{k}={v[1]}" for k, v in moved.items()), datasets_root())
            continue
        d2_datasets.register(name, functools.partial(_load, name, xyxy_abs, d2_metadata))
        d2_metadata.get(name).set(**ours)
        registered.append(name)
    return registered
