"""Images of different sizes as one padded batch (detectron2's ``ImageList.from_tensors``)."""

from __future__ import annotations

import torch


def pad_to_batch(
    images: list[torch.Tensor], size_divisibility: int = 0
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(C, h_i, w_i) tensors of one dtype and device -> one (N, C, Hp, Wp) batch, zero-padded at
    the bottom/right; Hp and Wp are the largest sizes rounded up to ``size_divisibility`` (0: no
    rounding, as detectron2). Returns the batch and each image's un-padded (h, w)."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    div = size_divisibility or 1
    hp = -(-max(h for h, _ in sizes) // div) * div
    wp = -(-max(w for _, w in sizes) // div) * div
    batch = images[0].new_zeros((len(images), images[0].shape[0], hp, wp))
    for im, padded in zip(images, batch):
        padded[:, : im.shape[1], : im.shape[2]].copy_(im)
    return batch, sizes
