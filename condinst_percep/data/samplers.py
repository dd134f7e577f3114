"""Index samplers: infinite seeded training streams (rank-sharded) and contiguous inference shards."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..utils import comm


def shared_random_seed() -> int:
    """A random seed drawn on rank 0 and shared with every process."""
    return int(comm.all_gather(int(np.random.randint(2**31)))[0])


class TrainingSampler(Sampler[int]):
    """Infinite stream of indices into a dataset of ``size``, sharded over ranks.

    Every rank draws the same sequence of permutations from ``torch.Generator(seed)`` and keeps
    the elements ``rank, rank + world_size, ...`` of their concatenation, so shards are disjoint
    and each epoch is covered exactly once across ranks.
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size {size}")
        self._size = size
        self._shuffle = shuffle
        self._seed = shared_random_seed() if seed is None else int(seed)
        self._rank = comm.get_rank() if rank is None else rank
        self._world_size = comm.get_world_size() if world_size is None else world_size

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def rank(self) -> int:
        return self._rank

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)


class RepeatFactorTrainingSampler(TrainingSampler):
    """``TrainingSampler`` that repeats images holding rare categories (LVIS-style, detectron2's).

    An image's repeat factor is ``max(1, max_c sqrt(repeat_thresh / f_c))`` over its categories,
    ``f_c`` the fraction of images containing category c; each epoch rounds it stochastically.
    """

    def __init__(
        self,
        repeat_factors: Sequence[float],
        shuffle: bool = True,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__(len(repeat_factors), shuffle, seed, rank, world_size)
        factors = torch.as_tensor(repeat_factors, dtype=torch.float64)
        self._int_part = torch.trunc(factors)
        self._frac_part = factors - self._int_part

    @staticmethod
    def repeat_factors_from_category_frequency(
        dataset_dicts: list[dict], repeat_thresh: float
    ) -> list[float]:
        image_cats = [{a["category_id"] for a in d.get("annotations", [])} for d in dataset_dicts]
        counts: dict[int, int] = defaultdict(int)
        for cats in image_cats:
            for c in cats:
                counts[c] += 1
        cat_factor = {
            c: max(1.0, math.sqrt(repeat_thresh / (n / len(dataset_dicts)))) for c, n in counts.items()
        }
        return [max((cat_factor[c] for c in cats), default=1.0) for cats in image_cats]

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            rands = torch.rand(len(self._frac_part), generator=g, dtype=torch.float64)
            reps = self._int_part + (rands < self._frac_part)
            indices = torch.repeat_interleave(torch.arange(len(reps)), reps.long())
            if self._shuffle:
                indices = indices[torch.randperm(len(indices), generator=g)]
            yield from indices.tolist()


class GroupedBatchSampler:
    """Batches of ``batch_size`` from an infinite index stream, one group (e.g. landscape vs
    portrait) per batch; yields lists of ``(index, rng_key)``.

    ``rng_key = (seed, rank, k)`` for the k-th index this rank drew: the loader seeds the sample's
    augmentation generator with it, so augmentations depend neither on the number of workers
    nor on where training was resumed. ``start_iter`` skips that many batches, so a run resumed
    at iteration ``start_iter`` sees exactly the batches the uninterrupted run would have seen.
    """

    def __init__(
        self,
        sampler: TrainingSampler,
        batch_size: int,
        group_ids: Sequence[int] | None = None,
        start_iter: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.group_ids = group_ids
        self.start_iter = start_iter

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, int, int]]]]:
        return itertools.islice(self._batches(), self.start_iter, None)

    def _batches(self) -> Iterator[list[tuple[int, tuple[int, int, int]]]]:
        buckets: dict[int, list] = defaultdict(list)
        seed, rank = self.sampler.seed, self.sampler.rank
        for k, index in enumerate(self.sampler):
            group = self.group_ids[index] if self.group_ids is not None else 0
            bucket = buckets[group]
            bucket.append((index, (seed, rank, k)))
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()


class InferenceSampler(Sampler[int]):
    """Each rank gets one contiguous shard of ``range(size)``; shards differ by at most one
    element, cover every index once, and keep the order, so gathered results are complete."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None) -> None:
        self._size = size
        rank = comm.get_rank() if rank is None else rank
        world_size = comm.get_world_size() if world_size is None else world_size
        shard_sizes = [size // world_size + int(r < size % world_size) for r in range(world_size)]
        begin = sum(shard_sizes[:rank])
        self._local_indices = range(begin, begin + shard_sizes[rank])

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)
