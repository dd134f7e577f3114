"""The paper's initialisation analysis (Sec. 3.2, Eq. (prod) and Table "init"), reproduced.

For every scheme of Table "init" it builds the loss network (VGG19 by default), embeds random
soft masks, and measures the RMS of every convolution's output e_l (before ReLU) and the norm of
the loss's input gradient. Eq. (prod) predicts Var[e_L] = Var[e_1] · Π_{l=2..L} ½ n_l Var[w_l],
n_l = k² c_l: the table puts the measured growth RMS(e_L) / RMS(e_1) beside the prediction.

    python tools/init_analysis.py --size 200 336 --png docs/images/init_analysis.png

Everything runs in float64: N(0, 1) grows activations by ~1e23, beyond float32's range once
squared in the loss.
"""
import argparse
import math

import torch
from tabulate import tabulate

from condinst_percep.perceptual import PerceptualLoss, RandomPerceptualNet
from condinst_percep.perceptual.random_net import FrozenConv2d

# (label, init, init_scale) in the order of the paper's Table "init".
SCHEMES = [
    ("N(0,1)", "normal", 1.0),
    ("N(0,0.1)", "normal", 0.1),
    ("N(0,0.01)", "normal", 0.01),
    ("U[-1,1]", "uniform", 1.0),
    ("U[-0.1,0.1]", "uniform", 0.1),
    ("U[-0.01,0.01]", "uniform", 0.01),
    ("Xavier-normal", "xavier", None),
    ("He fan-in (paper)", "he", None),
]


def soft_masks(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """(n, 1, H, W) float64 soft elliptical masks in (0, 1), random centres, axes and edges."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    ys = torch.linspace(0, 1, h, dtype=torch.float64).view(h, 1)
    xs = torch.linspace(0, 1, w, dtype=torch.float64).view(1, w)
    masks = []
    for _ in range(n):
        cy, cx, ay, ax, angle, sharpness = torch.rand(6, generator=gen, dtype=torch.float64)
        cy, cx = 0.25 + 0.5 * cy, 0.25 + 0.5 * cx
        ay, ax = 0.1 + 0.3 * ay, 0.1 + 0.3 * ax
        angle = math.pi * angle
        dy, dx = ys - cy, xs - cx
        u = (dx * math.cos(angle) + dy * math.sin(angle)) / ax
        v = (-dx * math.sin(angle) + dy * math.cos(angle)) / ay
        masks.append(torch.sigmoid((4 + 12 * sharpness) * (1 - torch.sqrt(u**2 + v**2))))
    return torch.stack(masks)[:, None]


def weight_variance(init: str, init_scale: float | None, c_in: int, c_out: int, k: int) -> float:
    if init == "he":
        return 2.0 / (k * k * c_in)
    if init == "normal":
        return init_scale**2
    if init == "uniform":
        return init_scale**2 / 3.0
    return 2.0 / (k * k * (c_in + c_out))


def analyse(
    init: str,
    init_scale: float | None,
    structure: tuple[int, ...] = (2, 2, 4, 4, 4),
    size: tuple[int, int] = (200, 336),
    num_masks: int = 4,
    seed: int = 0,
) -> dict:
    """Measured per-layer RMS, Eq. (prod)'s prediction, and the input-gradient norm.

    Returns a dict: ``rms`` (list of L floats, RMS of e_l), ``predicted_rms`` (L floats,
    RMS(e_1) · sqrt(Π_{l=2..} ½ n_l Var[w_l])), ``grad_norm`` (‖∂ℓ/∂pred‖ for the
    final-layer loss with λ = 1 on ``num_masks`` pred/target pairs), ``loss``.
    """
    net = RandomPerceptualNet(1, structure=structure, init=init, init_scale=init_scale, seed=seed)
    net.to(torch.float64)
    convs = [m for m in net.modules() if isinstance(m, FrozenConv2d)]
    rms = []

    def record(module, args, out):
        rms.append(out.square().mean().sqrt().item())

    hooks = [conv.register_forward_hook(record) for conv in convs]
    pred = soft_masks(num_masks, size, seed=2 * seed + 1).requires_grad_(True)
    target = soft_masks(num_masks, size, seed=2 * seed + 2)
    with torch.no_grad():
        net(pred)
    for h in hooks:
        h.remove()

    loss = PerceptualLoss(net)(pred, target)
    (grad,) = torch.autograd.grad(loss, pred)

    predicted = [rms[0]]
    for conv in convs[1:]:
        c_out, c_in, k, _ = conv.weight.shape
        factor = 0.5 * k * k * c_in * weight_variance(init, init_scale, c_in, c_out, k)
        predicted.append(predicted[-1] * math.sqrt(factor))
    return {"rms": rms, "predicted_rms": predicted, "grad_norm": grad.norm().item(),
            "loss": loss.item()}


def run(structure, size, num_masks, seed) -> list[tuple[str, dict]]:
    return [(label, analyse(init, scale, structure, size, num_masks, seed))
            for label, init, scale in SCHEMES]


def table(results: list[tuple[str, dict]]) -> str:
    rows = []
    for label, r in results:
        rms, pred = r["rms"], r["predicted_rms"]
        rows.append([
            label, f"{rms[0]:.3g}", f"{rms[-1]:.3g}", f"{rms[-1] / rms[0]:.3g}",
            f"{pred[-1] / pred[0]:.3g}", f"{max(rms) / min(rms):.3g}", f"{r['grad_norm']:.3g}",
        ])
    headers = ["init", "RMS e_1", f"RMS e_{len(results[0][1]['rms'])}", "growth measured",
               "growth Eq. (prod)", "max/min RMS over layers", "‖∂ℓ/∂pred‖"]
    return tabulate(rows, headers=headers, tablefmt="github")


def plot(results: list[tuple[str, dict]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rms, ax_grad) = plt.subplots(1, 2, figsize=(13, 5),
                                          gridspec_kw={"width_ratios": [2, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, r), color in zip(results, colors):
        layers = range(1, len(r["rms"]) + 1)
        ax_rms.semilogy(layers, r["rms"], "o-", color=color, label=label, markersize=3)
        ax_rms.semilogy(layers, r["predicted_rms"], "--", color=color, linewidth=0.8)
    ax_rms.set_xlabel("convolution layer l")
    ax_rms.set_ylabel("RMS of e_l (solid: measured, dashed: Eq. (prod))")
    ax_rms.legend(fontsize=8)
    ax_rms.grid(True, which="major", alpha=0.3)
    labels = [label for label, _ in results]
    ax_grad.barh(labels, [r["grad_norm"] for _, r in results], color=colors[: len(results)])
    ax_grad.set_xscale("log")
    ax_grad.invert_yaxis()
    ax_grad.set_xlabel("input-gradient norm ‖∂ℓ/∂pred‖")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structure", default="2,2,4,4,4", help="convolutions per block")
    parser.add_argument("--size", type=int, nargs=2, default=(200, 336), metavar=("H", "W"))
    parser.add_argument("--num-masks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", default=None, help="write the figure here")
    args = parser.parse_args()
    structure = tuple(int(s) for s in args.structure.split(","))
    torch.set_grad_enabled(True)
    results = run(structure, tuple(args.size), args.num_masks, args.seed)
    print(table(results))
    if args.png:
        title = (f"structure {args.structure}, {args.num_masks} soft masks "
                 f"{args.size[0]}×{args.size[1]}, float64")
        plot(results, args.png, title)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
