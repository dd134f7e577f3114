"""Samplers and loaders: determinism, sharding, aspect grouping, resume, workers."""

import itertools

import pytest
import torch

from condinst_percep.config import get_cfg
from condinst_percep.data import (
    DatasetCatalog,
    GroupedBatchSampler,
    InferenceSampler,
    MetadataCatalog,
    RepeatFactorTrainingSampler,
    TrainingSampler,
    build_detection_train_loader,
    generate_shapes,
    register_coco_instances,
)


def _take(iterable, n):
    return list(itertools.islice(iterable, n))


def test_training_sampler_is_seeded_and_epochs_are_permutations():
    a = _take(TrainingSampler(10, seed=5, rank=0, world_size=1), 30)
    assert a == _take(TrainingSampler(10, seed=5, rank=0, world_size=1), 30)
    assert a != _take(TrainingSampler(10, seed=6, rank=0, world_size=1), 30)
    for epoch in range(3):
        assert sorted(a[10 * epoch : 10 * epoch + 10]) == list(range(10))
    assert a[:10] != a[10:20]
    assert _take(TrainingSampler(4, shuffle=False, seed=0, rank=0, world_size=1), 6) == [0, 1, 2, 3, 0, 1]


def test_training_sampler_shards_are_disjoint_and_cover_each_epoch():
    full = _take(TrainingSampler(12, seed=1, rank=0, world_size=1), 24)
    shards = [_take(TrainingSampler(12, seed=1, rank=r, world_size=3), 8) for r in range(3)]
    for r in range(3):
        assert shards[r] == full[r::3]
    first_epoch = [i for s in shards for i in s[:4]]
    assert sorted(first_epoch) == list(range(12))


def test_grouped_batches_are_homogeneous_and_resume_exactly():
    groups = [0, 1, 1, 0, 1, 0, 0, 1, 1]
    sampler = TrainingSampler(len(groups), seed=2, rank=1, world_size=2)
    batches = _take(GroupedBatchSampler(sampler, 3, groups), 20)
    for batch in batches:
        assert len(batch) == 3 and len({groups[i] for i, _ in batch}) == 1
    keys = [key for batch in batches for _, key in batch]
    assert len(set(keys)) == len(keys) and all(k[:2] == (2, 1) for k in keys)
    resumed = _take(GroupedBatchSampler(sampler, 3, groups, start_iter=7), 13)
    assert resumed == batches[7:]
    ungrouped = _take(GroupedBatchSampler(sampler, 2), 3)
    assert [i for b in ungrouped for i, _ in b] == _take(iter(sampler), 6)


@pytest.mark.parametrize("size, world", [(10, 3), (2, 3), (7, 1), (0, 2)])
def test_inference_sampler_contiguous_shards(size, world):
    shards = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_repeat_factor_sampler():
    # Category 1 is in 1 of 4 images (f = 0.25); with threshold 1.0 its images repeat 2x.
    dicts = [{"annotations": [{"category_id": 0}]}] * 3 + [{"annotations": [{"category_id": 1}]}]
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 1.0)
    assert factors == pytest.approx([1 / 0.75**0.5, 1 / 0.75**0.5, 1 / 0.75**0.5, 2.0])
    stream = _take(RepeatFactorTrainingSampler([1.0, 1.0, 3.0], seed=0, rank=0, world_size=1), 50)
    for epoch in range(10):
        assert sorted(stream[5 * epoch : 5 * epoch + 5]) == [0, 1, 2, 2, 2]


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("shapes"))
    json_file = generate_shapes(folder, num_images=8, min_size=40, max_size=56, seed=0)
    name = "test_samplers_shapes"
    register_coco_instances(name, {}, json_file, folder + "/images")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(name, workers, ims=4):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (40, 48, 56)
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    cfg.SOLVER.IMS_PER_BATCH = ims
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.SEED = 11
    return cfg


def _summary(batches):
    return [
        [(d["image_id"], d["image"], d["instances"].gt_boxes, d["instances"].gt_masks) for d in b]
        for b in batches
    ]


def _assert_same(a, b):
    assert len(a) == len(b)
    for ba, bb in zip(a, b):
        for (ia, im_a, bx_a, m_a), (ib, im_b, bx_b, m_b) in zip(ba, bb, strict=True):
            assert ia == ib and torch.equal(im_a, im_b) and torch.equal(bx_a, bx_b) and torch.equal(m_a, m_b)


def test_train_loader_independent_of_workers_and_resumable(tiny_shapes):
    base = _summary(_take(build_detection_train_loader(_cfg(tiny_shapes, 0)), 5))
    for batch in base:
        assert len(batch) == 4
        orientations = {im.shape[2] > im.shape[1] for _, im, _, _ in batch}
        assert len(orientations) == 1
    sizes = {min(im.shape[1:]) for b in base for _, im, _, _ in b}
    assert len(sizes) > 1 and sizes <= {40, 48, 56}
    _assert_same(_summary(_take(build_detection_train_loader(_cfg(tiny_shapes, 2)), 5)), base)
    resumed = build_detection_train_loader(_cfg(tiny_shapes, 0), start_iter=3)
    _assert_same(_summary(_take(resumed, 2)), base[3:])


def test_train_loader_refuses_bad_batch_size(tiny_shapes):
    with pytest.raises(ValueError, match=r"IMS_PER_BATCH \(0\)"):
        build_detection_train_loader(_cfg(tiny_shapes, 0, ims=0))
