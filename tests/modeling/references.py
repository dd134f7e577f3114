"""References for the CondInst tests: AdelaiDet's R-50 state dict as recorded in tests/assets, and
the dynamic mask head written as a loop over instances."""
import torch

from condinst_percep.layers import aligned_bilinear
from tests.conftest import ASSETS

SIZES_OF_INTEREST = (64, 128, 256, 512, 1024)


def adelaidet_r50_state_dict() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of each entry of AdelaiDet's R-50 CondInst state dict, in its order."""
    rows = []
    for line in (ASSETS / "condinst_r50_state_dict.tsv").read_text().splitlines():
        if not line.startswith("#"):
            key, shape, _ = line.split("\t")
            rows.append((key, tuple(int(s) for s in shape.strip("(,)").split(",") if s.strip())))
    return rows


def naive_mask_logits(params, locations, im_inds, levels, mask_feats, stride, soi=SIZES_OF_INTEREST):
    """The default dynamic mask head (3 layers, 8 channels, 169 parameters per instance) as a loop:
    explicit relative coordinates and 1x1 convs as matrix products, upsampled to stride 4.

    params (N, 169), locations (N, 2) as (x, y), im_inds and levels (N,), mask_feats (B, 8, H, W);
    returns (N, 1, H * stride / 4, W * stride / 4) in params' dtype."""
    _, _, h, w = mask_feats.shape
    ys, xs = torch.meshgrid(
        torch.arange(h) * stride + stride // 2, torch.arange(w) * stride + stride // 2, indexing="ij"
    )
    out = []
    for k in range(len(params)):
        p = params[k]
        lx, ly = locations[k].tolist()
        s = soi[int(levels[k])]
        x = torch.cat([((lx - xs) / s)[None], ((ly - ys) / s)[None], mask_feats[im_inds[k]]], 0)
        x = x.reshape(10, -1).to(p.dtype)
        x = torch.relu(p[0:80].reshape(8, 10) @ x + p[152:160, None])
        x = torch.relu(p[80:144].reshape(8, 8) @ x + p[160:168, None])
        x = p[144:152].reshape(1, 8) @ x + p[168:169, None]
        out.append(x.reshape(1, h, w))
    return aligned_bilinear(torch.stack(out), stride // 4)
