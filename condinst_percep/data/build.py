"""Training and test data loaders built from a config (detectron2's entry points)."""

from __future__ import annotations

import inspect
import logging
import pickle
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset

from ..config.validate import Report, check_choice
from ..utils import comm
from .catalog import DatasetCatalog, MetadataCatalog
from .dataset_mapper import DatasetMapper
from .samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
    shared_random_seed,
)
from .validation import (
    POLICY_KEY,
    BadDataError,
    BadDataReport,
    check_policy,
    collect_bad_data,
)

logger = logging.getLogger(__name__)


def _has_usable_annotation(record: dict) -> bool:
    return any(a.get("iscrowd", 0) == 0 for a in record.get("annotations", []))


def get_detection_dataset_dicts(
    names: str | Sequence[str],
    filter_empty: bool = True,
    bad_data_policy: str = "error",
    allow_empty: bool = False,
) -> list[dict]:
    """Concatenates the named datasets, loaded under ``bad_data_policy`` (see
    :mod:`condinst_percep.data.validation`), and logs one summary of what was skipped or fixed.

    With ``filter_empty`` drops images without a non-crowd annotation (AdelaiDet's
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``). An empty result raises unless ``allow_empty``
    (inference over no image is allowed, training is not).
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("No dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    report = BadDataReport(bad_data_policy)
    dataset_dicts = []
    with collect_bad_data(report):
        for name in names:
            dicts = DatasetCatalog.get(name)
            if not dicts and not allow_empty:
                raise ValueError(f"Dataset '{name}' is empty: training needs at least one image")
            if not dicts:
                logger.warning(f"Dataset '{name}' has no images")
            dataset_dicts.extend(dicts)
    report.log(logger, f"Bad-data summary of {names}")
    classes = {name: MetadataCatalog.get(name).get("thing_classes") for name in names}
    if len({tuple(c) for c in classes.values() if c is not None}) > 1:
        raise ValueError(f"Datasets {names} have different thing_classes: {classes}")
    if filter_empty:
        before = len(dataset_dicts)
        dataset_dicts = [d for d in dataset_dicts if _has_usable_annotation(d)]
        logger.info(
            f"Removed {before - len(dataset_dicts)} images without non-crowd annotations; "
            f"{len(dataset_dicts)} images left"
        )
        if not dataset_dicts:
            raise ValueError(f"No image of {names} has a non-crowd annotation")
    _log_instance_histogram(dataset_dicts, classes[names[0]])
    return dataset_dicts


def _log_instance_histogram(dataset_dicts: list[dict], class_names: list[str] | None) -> None:
    counts: dict[int, int] = {}
    for d in dataset_dicts:
        for a in d.get("annotations", []):
            if a.get("iscrowd", 0) == 0:
                counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
    if not counts:
        return
    rows = [
        (class_names[c] if class_names and c < len(class_names) else str(c), n)
        for c, n in sorted(counts.items())
    ]
    logger.info(
        f"{len(dataset_dicts)} images, {sum(counts.values())} instances:\n"
        + tabulate(rows, headers=["category", "#instances"], tablefmt="pipe")
    )


class MapDataset(Dataset):
    """A list of dataset dicts, stored pickled in one numpy buffer, mapped on access.

    The buffer keeps workers from touching (and so copying) millions of Python objects, and
    every access unpickles a fresh dict, so a mapper may modify its input. A key may be an index
    or ``(index, rng_key)``; with a key and a mapper that takes ``rng``, the mapper gets
    ``numpy.random.default_rng(rng_key)``.

    A :class:`BadDataError` from the mapper (missing or corrupt image, size mismatch, bad
    annotation) raises, naming the file, under ``bad_data_policy="error"``. Under ``"skip"`` it
    is counted and logged, and with ``replace_bad`` the sample is replaced by the dataset index
    drawn from ``default_rng([*rng_key, attempt])`` (``[index, attempt]`` without a key), which
    also drives the replacement's augmentation: the stream stays a function of the keys, so a
    resumed run sees the same samples. Without ``replace_bad`` (inference) the item is ``None``
    and the collator leaves it out.
    """

    MAX_ATTEMPTS = 16

    def __init__(
        self,
        dataset_dicts: list[dict],
        mapper: Callable,
        bad_data_policy: str = "error",
        replace_bad: bool = True,
    ) -> None:
        blobs = [np.frombuffer(pickle.dumps(d, protocol=-1), dtype=np.uint8) for d in dataset_dicts]
        self._addr = np.cumsum([len(b) for b in blobs])
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)
        self._mapper = mapper
        self._mapper_takes_rng = "rng" in inspect.signature(mapper).parameters
        self._policy = check_policy(bad_data_policy)
        self._replace_bad = replace_bad
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self._addr)

    def record(self, index: int) -> dict:
        start = 0 if index == 0 else int(self._addr[index - 1])
        return pickle.loads(self._buffer[start : int(self._addr[index])].tobytes())

    def __getitem__(self, key: int | tuple[int, tuple]) -> dict | None:
        index, rng_key = key if isinstance(key, tuple) else (key, None)
        rng = np.random.default_rng(list(rng_key)) if rng_key is not None else None
        for attempt in range(1, self.MAX_ATTEMPTS + 1):
            record = self.record(index)
            try:
                return self._mapper(record, rng=rng) if self._mapper_takes_rng else self._mapper(record)
            except BadDataError as e:
                error = _naming_the_file(e, record)
                if self._policy == "error":
                    hint = f" ({POLICY_KEY} 'skip' would replace this sample and go on)"
                    raise type(error)(f"{error}{hint}") from e
                self.num_skipped += 1
                if not self._replace_bad:
                    logger.warning(f"Skipped: {error} ({self.num_skipped} skipped in this process)")
                    return None
                seed = [*(rng_key if rng_key is not None else (key,)), attempt]
                replacement_rng = np.random.default_rng(seed)
                index = int(replacement_rng.integers(len(self)))
                rng = replacement_rng if rng_key is not None else None
                logger.warning(
                    f"Skipped: {error}; replaced by dataset index {index} "
                    f"({self.num_skipped} skipped in this process)"
                )
        raise BadDataError(
            f"{self.MAX_ATTEMPTS} bad samples in a row for key {key} (the last: {error}); "
            "most of the dataset seems unreadable"
        )


def _naming_the_file(error: BadDataError, record: dict) -> BadDataError:
    file_name = record.get("file_name")
    if file_name is None or file_name in str(error):
        return error
    return type(error)(f"{file_name} (image id {record.get('image_id')}): {error}")


def trivial_batch_collator(batch: list) -> list:
    """The batch as a list, without the ``None`` of samples skipped as bad data."""
    return [x for x in batch if x is not None]


def worker_init_reset_seed(worker_id: int) -> None:
    """Seeds python, numpy and torch in a worker from its torch seed (base seed + worker id)."""
    seed = torch.initial_seed() % 2**31
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _aspect_ratio_groups(dataset_dicts: list[dict]) -> list[int]:
    """0 for landscape (w > h), 1 otherwise; resize and flip keep this, so it can be read from
    the records before any image is decoded."""
    return [0 if d["width"] > d["height"] else 1 for d in dataset_dicts]


SAMPLERS_TRAIN = ("TrainingSampler", "RepeatFactorTrainingSampler")


def check_loader_cfg(cfg, bad: Report) -> None:
    """The checks of the ``DATALOADER`` keys the loaders read (see ``collect_problems``); the
    split of ``SOLVER.IMS_PER_BATCH`` over the processes is :func:`images_per_process`'s."""
    check_choice(cfg, bad, "DATALOADER.SAMPLER_TRAIN", SAMPLERS_TRAIN)
    if cfg.DATALOADER.NUM_WORKERS < 0:
        bad("DATALOADER.NUM_WORKERS", "must be >= 0")


def images_per_process(cfg) -> int:
    """``SOLVER.IMS_PER_BATCH`` (the batch over all processes) divided by the number of
    processes; ValueError unless it is a positive multiple of it."""
    total, world_size = cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size()
    if total <= 0 or total % world_size != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total}) is the total batch over all processes: it must be "
            f"positive and divisible by the number of processes ({world_size})"
        )
    return total // world_size


def build_detection_train_loader(cfg, mapper: Callable | None = None, start_iter: int = 0):
    """Infinite iterable of batches (lists of mapped dicts) of ``SOLVER.IMS_PER_BATCH //
    world_size`` images for this process.

    The order is a function of ``SEED`` (a shared random seed when ``SEED < 0``), the rank and
    the world size only; ``start_iter`` resumes the stream at that iteration.
    """
    batch_size = images_per_process(cfg)
    policy = check_policy(cfg.DATALOADER.BAD_DATA_POLICY)
    dataset_dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, policy
    )
    if mapper is None:
        mapper = DatasetMapper.build(cfg, is_train=True)
    seed = cfg.SEED if cfg.SEED >= 0 else shared_random_seed()
    sampler_name = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler_name == "TrainingSampler":
        sampler = TrainingSampler(len(dataset_dicts), seed=seed)
    elif sampler_name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD
        )
        sampler = RepeatFactorTrainingSampler(factors, seed=seed)
    else:
        raise ValueError(f"Unknown DATALOADER.SAMPLER_TRAIN {sampler_name!r}")
    group_ids = _aspect_ratio_groups(dataset_dicts) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    batch_sampler = GroupedBatchSampler(sampler, batch_size, group_ids, start_iter)
    logger.info(
        f"Training loader: {len(dataset_dicts)} images, {batch_size} per batch per "
        f"process, seed {seed}, starting at iteration {start_iter}"
    )
    return DataLoader(
        MapDataset(dataset_dicts, mapper, policy),
        batch_sampler=batch_sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
        worker_init_fn=worker_init_reset_seed,
        generator=torch.Generator().manual_seed(seed + comm.get_rank()),
    )


def build_detection_test_loader(cfg, dataset_name: str, mapper: Callable | None = None) -> DataLoader:
    """Batches of one mapped image, this process's contiguous shard of the dataset, in order.
    Empty images are kept: evaluation must see every image. An empty dataset gives an empty
    loader (with a warning); under the "skip" policy an unreadable image gives an empty batch."""
    policy = check_policy(cfg.DATALOADER.BAD_DATA_POLICY)
    dataset_dicts = get_detection_dataset_dicts(
        dataset_name, filter_empty=False, bad_data_policy=policy, allow_empty=True
    )
    if mapper is None:
        mapper = DatasetMapper.build(cfg, is_train=False)
    return DataLoader(
        MapDataset(dataset_dicts, mapper, policy, replace_bad=False),
        sampler=InferenceSampler(len(dataset_dicts)),
        batch_size=1,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
        worker_init_fn=worker_init_reset_seed,
    )
