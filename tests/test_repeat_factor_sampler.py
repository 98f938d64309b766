"""DATALOADER.SAMPLER_TRAIN RepeatFactorTrainingSampler: detectron2's repeat factors (LVIS paper)
against hand-computed values, stochastic rounding, exact resume, disjoint rank shards, the loader."""
import itertools
from collections import Counter

import pytest
import torch

from engine_utils import registered_shapes
from resnet_det.config import get_cfg, validate_cfg
from resnet_det.data import (RepeatFactorTrainingSampler, build_detection_train_loader,
                              repeat_factors_from_category_frequency)


def _image(*cats):
    return {"annotations": [{"category_id": c, "bbox": [0, 0, 1, 1]} for c in cats]}


def test_repeat_factors_match_hand_computed_values():
    # 10 images: category 0 in nine, 1 in one (image 0, twice: counted once), 2 in four; one without any.
    dicts = [_image(0, 1, 1)] + [_image(0, 2)] * 4 + [_image(0)] * 4 + [_image()]
    # category 0 is in 9 of 10 images: f = 0.9, 1 in 1: f = 0.1, 2 in 4: f = 0.4.
    # t = 0.5: r(0) = max(1, sqrt(0.5 / 0.9)) = 1, r(1) = sqrt(5) = 2.2360680, r(2) = sqrt(1.25) = 1.1180340;
    # an image takes the largest r of its categories.
    factors = repeat_factors_from_category_frequency(dicts, 0.5)
    expected = [2.2360680] + [1.1180340] * 4 + [1.0] * 4 + [1.0]
    assert factors.tolist() == pytest.approx(expected, abs=1e-6)
    # t = 0 (or any t below every frequency) repeats nothing.
    assert repeat_factors_from_category_frequency(dicts, 0.0).tolist() == [1.0] * 10


def test_epochs_round_stochastically_and_average_to_the_factors():
    factors = [1.0, 2.5, 1.0, 1.2, 3.0]
    sampler = RepeatFactorTrainingSampler(factors, seed=3, rank=0, world_size=1)
    per_epoch = []
    for e in range(400):
        counts = Counter(sampler._epoch(e).tolist())
        per_epoch.append([counts[i] for i in range(5)])
        for i, r in enumerate(factors):  # floor(r) or ceil(r) copies of each image per epoch
            assert counts[i] in {int(r), int(r) + (r != int(r))}, (e, i, counts)
    mean = torch.tensor(per_epoch, dtype=torch.float64).mean(0)
    assert mean.tolist() == pytest.approx(factors, abs=0.08)  # E[copies] = r
    assert per_epoch[0] != per_epoch[1] or sampler._epoch(0).tolist() != sampler._epoch(1).tolist()
    # The stream walks epoch after epoch, each shuffled.
    lengths = [sum(c) for c in per_epoch[:3]]
    stream = [i for _, i in itertools.islice(sampler.indices(0), sum(lengths))]
    assert stream[:lengths[0]] == sampler._epoch(0).tolist()
    assert stream[lengths[0] + lengths[1]:] == sampler._epoch(2).tolist()


def test_resume_and_rank_shards():
    factors = repeat_factors_from_category_frequency([_image(0)] * 6 + [_image(1), _image(0, 2)], 0.5)
    assert factors.max() > 1
    glob = [i for _, i in itertools.islice(RepeatFactorTrainingSampler(factors, seed=1, rank=0, world_size=1)
                                           .indices(), 120)]
    # Resume: a fresh sampler started at position k continues the same stream (no replay needed).
    for k in (0, 7, 33, 101):
        late = [i for _, i in itertools.islice(RepeatFactorTrainingSampler(factors, seed=1, rank=0, world_size=1)
                                               .indices(k), 19)]
        assert late == glob[k:k + 19]
    # DDP: rank r takes global positions r, r + W, ...: disjoint shards that interleave to the one stream.
    r0 = [i for _, i in itertools.islice(RepeatFactorTrainingSampler(factors, seed=1, rank=0, world_size=2)
                                         .indices(), 60)]
    r1 = [i for _, i in itertools.islice(RepeatFactorTrainingSampler(factors, seed=1, rank=1, world_size=2)
                                         .indices(), 60)]
    assert r0 == glob[0::2] and r1 == glob[1::2]
    late = [i for _, i in itertools.islice(RepeatFactorTrainingSampler(factors, seed=1, rank=1, world_size=2)
                                           .indices(23), 9)]
    assert late == r1[23:32]
    other = [i for _, i in itertools.islice(RepeatFactorTrainingSampler(factors, seed=2, rank=0, world_size=1)
                                            .indices(), 120)]
    assert other != glob
    # The rare images come more often than the common ones.
    counts = Counter(glob)
    assert min(counts[6], counts[7]) > max(counts[i] for i in range(6))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    with registered_shapes(str(tmp_path_factory.mktemp("ds") / "shapes"), "rf_shapes", 12, 2, 4) as root:
        yield root


def _cfg(tmp_path, sampler):
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", ("rf_shapes",), "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0,
                         "OUTPUT_DIR", str(tmp_path), "SEED", 5, "DATALOADER.SAMPLER_TRAIN", sampler,
                         "DATALOADER.REPEAT_THRESHOLD", 1.0, "INPUT.MIN_SIZE_TRAIN", (64,),
                         "INPUT.MAX_SIZE_TRAIN", 96])
    validate_cfg(cfg)
    return cfg


def _ids(batches):
    return [[x["image_id"] for x in b] for b in batches]


def test_train_loader_uses_the_sampler_and_resumes_exactly(tmp_path, shapes):
    cfg = _cfg(tmp_path, "RepeatFactorTrainingSampler")
    loader = build_detection_train_loader(cfg)
    assert isinstance(loader.sampler, RepeatFactorTrainingSampler) and loader.sampler._frac_part.any()
    fresh = list(itertools.islice(iter(loader), 14))  # more than one epoch
    for k in (3, 9):
        resumed = list(itertools.islice(iter(build_detection_train_loader(cfg, start_iter=k)), 4))
        assert _ids(resumed) == _ids(fresh[k:k + 4])
        for b1, b2 in zip(fresh[k:k + 4], resumed):
            assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["boxes"], y["boxes"])
                       for x, y in zip(b1, b2))
    plain = list(itertools.islice(iter(build_detection_train_loader(_cfg(tmp_path, "TrainingSampler"))), 14))
    assert _ids(plain) != _ids(fresh)


def test_sampler_config_errors():
    cfg = get_cfg()
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorSampler"
    with pytest.raises(ValueError, match="DATALOADER.SAMPLER_TRAIN='RepeatFactorSampler'.*RepeatFactorTrainingSampler"):
        validate_cfg(cfg)
    cfg = get_cfg()
    cfg.DATALOADER.REPEAT_THRESHOLD = 2.0
    with pytest.raises(ValueError, match="DATALOADER.REPEAT_THRESHOLD=2.0"):
        validate_cfg(cfg)
