"""CondInst with and without the perceptual loss: training step, inference, and the loss alone.

Three modes, every timing round-robin (one repeat of each case in turn, so other processes'
load hits all cases alike), medians and ratios from the same run:

``step``: forward + backward + SGD step of the real model built from ``--config`` (default the
    quickstart) on a synthetic batch, per variant: ``none`` (plain CondInst, no loss) or a loss
    network ``STRUCTURE[/DIV][@CHUNK][+cl][+bf16net]`` (``1,1,1,1,1``, ``vgg16``, ``vgg19``;
    ``/8`` divides the widths 64..512 by 8, as the quickstart's loss does; ``@16`` sets
    MODEL.PERCEP.CHUNK_SIZE to 16, else ``--chunk-size``; ``+cl`` sets CHANNELS_LAST and
    ``+bf16net`` AUTOCAST "bfloat16" for that variant alone), each in fp32 and/or under bf16/fp16 autocast
    (``--precisions``). Peak memory of one step: CUDA ``max_memory_allocated``; CPU peak RSS.
``inference``: latency per image of ``model.eval()`` for the same variants (the loss must cost
    nothing at inference).
``loss``: the perceptual loss alone on CondInst-shaped inputs (``--instances`` sigmoid soft
    masks over ``--objects`` GT masks at ``--mask-size``): each option (chunks, channels_last,
    bf16 for the network, crop-to-box) against the fp32 reference — value relative difference,
    gradient cosine (w.r.t. the mask logits), time, peak memory, achieved TFLOP/s — beside the
    bf16 matrix-multiply peak measured in the same run.
``plan``: what crop-to-box buys, without running a network: for ``--instances`` random boxes on
    ``--mask-size`` maps (centres uniform, sizes up to 45 % × 50 % of the map), the distinct
    window shapes and the fraction of the map's pixels the windows cover, per loss network.

Quickstart on the CPU (docs/benchmarks.md):
    python benchmarks/bench_condinst_step.py step --variants none 1,1,1,1,1/8 vgg19/8 \\
        1,1,1,1,1 --precisions fp32 bf16
COCO scale on one GPU (R-50, 2 images 800×1333, MAX_PROPOSALS 500):
    python benchmarks/bench_condinst_step.py step --device cuda --coco \\
        --variants none 1,1,1,1,1 vgg16 vgg19 --precisions fp32 bf16 --chunk-size 64
"""
import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

from bench_perceptual import forward_gflop, machine_description, parse_structure, peak_bytes
from condinst_percep.config import get_cfg
from condinst_percep.modeling import build_model
from condinst_percep.perceptual import PerceptualLoss, RandomPerceptualNet
from condinst_percep.perceptual.crop import plan_crops
from condinst_percep.perceptual.random_net import VGG_WIDTHS
from condinst_percep.structures import Instances

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# (quickstart, --coco) defaults of the synthetic batch.
BATCH_DEFAULTS = {
    "images": (8, 2), "image_size": ([160, 224], [800, 1333]), "gt_per_image": (4, 40),
    "num_classes": (4, 80),
}


# Variant suffixes: loss-network options set for that variant alone.
VARIANT_OPTIONS = {"cl": ("CHANNELS_LAST", True), "bf16net": ("AUTOCAST", "bfloat16")}


def parse_variant(text: str):
    """'none' → None; 'STRUCTURE[/DIV][@CHUNK][+cl][+bf16net]' → (structure, widths, chunk size
    or None, {MODEL.PERCEP key: value} of the suffixes)."""
    if text == "none":
        return None
    text, *suffixes = text.split("+")
    unknown = [x for x in suffixes if x not in VARIANT_OPTIONS]
    if unknown:
        raise SystemExit(f"variant {text!r}: unknown suffix(es) {unknown}; known: "
                         f"{sorted(VARIANT_OPTIONS)}")
    text, _, chunk = text.partition("@")
    structure, _, div = text.partition("/")
    div = int(div or 1)
    return (parse_structure(structure), tuple(w // div for w in VGG_WIDTHS),
            int(chunk) if chunk else None, dict(VARIANT_OPTIONS[x] for x in suffixes))


def build_cfg(args, variant, teacher_files):
    cfg = get_cfg()
    if args.coco:
        cfg.merge_from_file("configs/CondInst/MS_R_50_1x.yaml")
    else:
        cfg.merge_from_file(args.config)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = args.device
    cfg.merge_from_list(args.opts)
    if variant is None:
        cfg.MODEL.CONDINST.MASK_HEAD.NAME = "DynamicMaskHead"
        cfg.MODEL.PERCEP.ENABLED = False
        return cfg
    structure, widths, chunk, options = variant
    for key, value in options.items():
        cfg.MODEL.PERCEP[key] = value
    cfg.MODEL.CONDINST.MASK_HEAD.NAME = "PercepMaskHead"
    cfg.MODEL.PERCEP.ENABLED = True
    cfg.MODEL.PERCEP.STRUCTURE = structure
    cfg.MODEL.PERCEP.WIDTHS = widths
    cfg.MODEL.PERCEP.CHUNK_SIZE = args.chunk_size if chunk is None else chunk
    cfg.MODEL.PERCEP.TARGET = args.target
    if args.target == "teacher":
        cfg.MODEL.TEACHER.CONFIG_FILE, cfg.MODEL.TEACHER.WEIGHTS = teacher_files
    return cfg


def write_teacher(args, folder):
    """A teacher with the student's plain config and random weights (cost, not accuracy)."""
    cfg = build_cfg(args, None, None)
    config_file = os.path.join(folder, "teacher.yaml")
    with open(config_file, "w") as f:
        f.write(cfg.dump())
    weights = os.path.join(folder, "teacher.pth")
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    return config_file, weights


def synthetic_batch(args, seed: int) -> list[dict]:
    """Images of random texture with random rectangles as GT (boxes = mask extents)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = args.image_size
    batch = []
    for _ in range(args.images):
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
        k = args.gt_per_image
        size = torch.rand(k, 2, generator=gen) * 0.4 + 0.1
        x0 = torch.rand(k, generator=gen) * (1 - size[:, 0]) * w
        y0 = torch.rand(k, generator=gen) * (1 - size[:, 1]) * h
        boxes = torch.stack([x0, y0, x0 + size[:, 0] * w, y0 + size[:, 1] * h], 1).floor()
        masks = torch.zeros(k, h, w, dtype=torch.bool)
        for i, (a, b, c, d) in enumerate(boxes.long().tolist()):
            masks[i, b:d, a:c] = True
            image[:, b:d, a:c] = (37 * i) % 256
        classes = torch.randint(0, args.num_classes, (k,), generator=gen)
        inst = Instances((h, w), gt_boxes=boxes, gt_classes=classes, gt_masks=masks)
        batch.append({"image": image, "height": h, "width": w, "instances": inst})
    return batch


class StepCase:
    def __init__(self, args, name, variant, precision, teacher_files):
        self.name, self.precision = name, precision
        self.cfg = build_cfg(args, variant, teacher_files)
        self.args = args
        torch.manual_seed(0)
        self.model = build_model(self.cfg)
        self.device = torch.device(args.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        self.batch = synthetic_batch(args, seed=0)
        self.times: list[float] = []
        self.peak = None
        self.loss_total = None
        self.instances = None  # sampled instances the mask head saw in the last step
        self.model.mask_head.register_forward_pre_hook(self._count_instances)

    def _count_instances(self, module, args) -> None:
        self.instances = len(args[2])

    def _autocast(self):
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype or torch.float32,
                              enabled=dtype is not None)

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            losses = self.model(self.batch)
        total = sum(losses.values())
        total.backward()
        self.optimizer.step()
        self.loss_total = total.detach()

    def infer(self) -> None:
        self.model.eval()
        with torch.no_grad(), self._autocast():
            self.model(self.batch[:1])

    def timed(self, fn) -> None:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        self.times.append(time.perf_counter() - t0)


def run_model_mode(args) -> tuple[list[str], list[list]]:
    with tempfile.TemporaryDirectory() as folder:
        teacher_files = write_teacher(args, folder) if args.target == "teacher" else None
        cases = [StepCase(args, v, parse_variant(v), p, teacher_files)
                 for v in args.variants for p in args.precisions]
    fn = (lambda c: c.train_step) if args.mode == "step" else (lambda c: c.infer)
    for case in cases:
        case.peak = peak_bytes(fn(case), case.device)
    for _ in range(args.warmup):
        for case in cases:
            fn(case)()
    for _ in range(args.repeats):
        for case in cases:
            case.timed(fn(case))
    base = {c.precision: statistics.median(c.times) for c in cases if c.name == "none"}
    base_peak = {c.precision: c.peak for c in cases if c.name == "none"}
    rows = []
    for c in cases:
        med = statistics.median(c.times)
        rows.append([
            c.name, c.precision, c.instances, f"{med * 1000:.0f}", f"{min(c.times) * 1000:.0f}",
            f"{med / base[c.precision]:.3f}" if c.precision in base else "-",
            f"{c.peak / 2**20:.0f}",
            f"{(c.peak - base_peak[c.precision]) / 2**20:+.0f}" if c.precision in base else "-",
        ])
    unit = "ms/step" if args.mode == "step" else "ms/image"
    headers = ["loss network", "precision", "instances", f"median {unit}", "min", "vs none",
               "peak MiB", "vs none MiB"]
    return headers, rows


def matmul_peak_tflops(device: torch.device, size: int, repeats: int) -> float:
    """Best bf16 (size × size) @ (size × size) throughput over ``repeats`` runs."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e12


class LossCase:
    """One option of the loss on CondInst-shaped inputs; GT targets shared via target_index."""

    def __init__(self, name, loss, inputs, autocast_dtype=None):
        self.name, self.loss, self.inputs = name, loss, inputs
        self.autocast_dtype = autocast_dtype
        self.times: list[float] = []
        self.peak = None
        self.value = self.grad = None

    def step(self) -> None:
        logits, targets, index, boxes = self.inputs
        logits.grad = None
        kwargs = {"target_index": index}
        if self.loss.crop_margin is not None:
            kwargs["boxes"] = boxes
        value = self.loss(torch.sigmoid(logits), targets, **kwargs)
        value.backward()
        self.value, self.grad = value.detach().double(), logits.grad.detach().double()


def condinst_like_inputs(args, device):
    """``--instances`` soft masks (sigmoid of a signed distance to a jittered box of their
    object, plus noise) over ``--objects`` GT box masks; boxes = union of object and jittered
    box, in mask pixels."""
    gen = torch.Generator().manual_seed(0)
    h, w = args.mask_size
    size = torch.rand(args.objects, 2, generator=gen) * 0.4 + 0.1
    x0 = torch.rand(args.objects, generator=gen) * (1 - size[:, 0]) * w
    y0 = torch.rand(args.objects, generator=gen) * (1 - size[:, 1]) * h
    objects = torch.stack([x0, y0, x0 + size[:, 0] * w, y0 + size[:, 1] * h], 1)
    index = torch.arange(args.instances) % args.objects
    extent = (objects[index, 2:] - objects[index, :2]).repeat(1, 2)
    jitter = torch.randn(args.instances, 4, generator=gen) * 0.05 * extent
    boxes = objects[index] + jitter
    ys = torch.arange(h)[None, :, None] + 0.5
    xs = torch.arange(w)[None, None, :] + 0.5

    def signed_distance(b):
        return torch.minimum(
            torch.minimum(xs - b[:, 0, None, None], b[:, 2, None, None] - xs),
            torch.minimum(ys - b[:, 1, None, None], b[:, 3, None, None] - ys),
        )[:, None]

    logits = signed_distance(boxes) + 0.5 * torch.randn(args.instances, 1, h, w, generator=gen)
    targets = (signed_distance(objects) > 0).float()
    union = torch.cat([torch.minimum(boxes[:, :2], objects[index, :2]),
                       torch.maximum(boxes[:, 2:], objects[index, 2:])], 1)
    return (logits.to(device).requires_grad_(), targets.to(device), index.to(device),
            union.to(device))


def run_loss_mode(args) -> tuple[list[str], list[list]]:
    device = torch.device(args.device)
    structure, widths, *_ = parse_variant(args.variants[0])
    net = RandomPerceptualNet(1, structure=structure, widths=widths).to(device)
    inputs = condinst_like_inputs(args, device)
    chunk = args.chunk_size or None
    margin = net.support_radius(net.num_blocks - 1)
    options = {
        "fp32 reference": dict(chunk_size=args.reference_chunk_size or None),
        f"chunked ({chunk})": dict(chunk_size=chunk),
        "channels_last": dict(chunk_size=chunk, channels_last=True),
        "bf16 network": dict(chunk_size=chunk, autocast_dtype=torch.bfloat16),
        "bf16 + channels_last": dict(chunk_size=chunk, autocast_dtype=torch.bfloat16,
                                     channels_last=True),
        f"crop (margin {margin})": dict(chunk_size=chunk, crop_margin=margin),
        "crop + bf16 + channels_last": dict(chunk_size=chunk, crop_margin=margin,
                                            autocast_dtype=torch.bfloat16, channels_last=True),
    }
    cases = [LossCase(name, PerceptualLoss(net, loss_weight=0.1, **kw), inputs)
             for name, kw in options.items()
             if name == "fp32 reference" or name in args.loss_options or not args.loss_options]
    for case in cases:
        case.peak = peak_bytes(case.step, device)
    for _ in range(args.warmup):
        for case in cases:
            case.step()
    for _ in range(args.repeats):
        for case in cases:
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            sync()
            t0 = time.perf_counter()
            case.step()
            sync()
            case.times.append(time.perf_counter() - t0)
    peak = matmul_peak_tflops(device, args.matmul_size, args.repeats)
    # Arithmetic of the uncropped loss: pred forward + input-gradient backward per instance,
    # target forward per distinct object.
    per = forward_gflop(net, args.mask_size)
    tflop = (2 * args.instances + args.objects) * per / 1e3
    ref = cases[0]
    ref_time = statistics.median(ref.times)
    rows = []
    for c in cases:
        med = statistics.median(c.times)
        rel = ((c.value - ref.value).abs() / ref.value.abs()).item()
        cos = F.cosine_similarity(c.grad.flatten(), ref.grad.flatten(), dim=0).item()
        rows.append([c.name, f"{rel:.1e}", f"{cos:.6f}", f"{med * 1000:.0f}",
                     f"{med / ref_time:.2f}", f"{c.peak / 2**20:.0f}",
                     f"{tflop / med:.3f}", f"{100 * tflop / med / peak:.1f}"])
    print(f"loss network {structure} widths {widths}; {args.instances} instances over "
          f"{args.objects} objects at {args.mask_size[0]}x{args.mask_size[1]}; "
          f"{tflop:.3f} TFLOP per call (uncropped); bf16 matmul peak "
          f"{args.matmul_size}^3: {peak:.3f} TFLOP/s")
    headers = ["option", "value rel. diff", "grad cosine", "median ms", "vs fp32",
               "peak MiB", "TFLOP/s (uncropped FLOPs)", "% of bf16 matmul peak"]
    return headers, rows


def run_plan_mode(args) -> tuple[list[str], list[list]]:
    gen = torch.Generator().manual_seed(0)
    h, w = args.mask_size
    centre = torch.rand(args.instances, 2, generator=gen) * torch.tensor([w, h])
    half = torch.rand(args.instances, 2, generator=gen) * torch.tensor([0.225 * w, 0.25 * h])
    boxes = torch.cat([centre - half, centre + half], dim=1)
    rows = []
    for text in args.variants:
        structure, widths, *_ = parse_variant(text)
        net = RandomPerceptualNet(1, structure=structure, widths=widths)
        margin = net.support_radius(net.num_blocks - 1)
        groups = plan_crops(boxes, (h, w), margin, 2**net.num_blocks, torch.device("cpu"))
        pixels = sum(len(g.index) * g.height * g.width for g in groups)
        rows.append([text, margin, net.receptive_field(net.num_blocks - 1), len(groups),
                     f"{100 * pixels / (args.instances * h * w):.0f}"])
    headers = ["loss network", "margin px", "receptive field px", "window shapes",
               "% of the map's pixels"]
    return headers, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("step", "inference", "loss", "plan"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--config", default="configs/Quickstart/CondInst_shapes.yaml")
    parser.add_argument("--coco", action="store_true",
                        help="R-50 CondInst (configs/CondInst/MS_R_50_1x.yaml; MAX_PROPOSALS "
                             "500), batch defaults: 2 images 800x1333 with 40 GT each, 80 classes")
    parser.add_argument("--variants", nargs="+", default=["none", "1,1,1,1,1/8", "vgg19/8"])
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=tuple(PRECISIONS))
    parser.add_argument("--target", default="gt", choices=("gt", "teacher"))
    parser.add_argument("--chunk-size", type=int, default=0, help="MODEL.PERCEP.CHUNK_SIZE")
    parser.add_argument("--images", type=int, help="default 8 (--coco: 2)")
    parser.add_argument("--image-size", type=int, nargs=2,
                        help="default 160 224 (--coco: 800 1333)")
    parser.add_argument("--gt-per-image", type=int, help="default 4 (--coco: 40)")
    parser.add_argument("--num-classes", type=int, help="default 4 (--coco: 80)")
    parser.add_argument("--instances", type=int, default=24, help="loss mode")
    parser.add_argument("--objects", type=int, default=4, help="loss mode")
    parser.add_argument("--mask-size", type=int, nargs=2, default=[200, 336], help="loss mode")
    parser.add_argument("--loss-options", nargs="*", default=[], help="loss mode: names to run")
    parser.add_argument("--reference-chunk-size", type=int, default=0,
                        help="loss mode: chunks of the fp32 reference (exact; 0: all at once, "
                             "which needs ~99 MiB per VGG19 instance at 200x336)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--opts", nargs="*", default=[], help="config KEY VALUE pairs")
    args = parser.parse_args()
    for name, defaults in BATCH_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults[args.coco])
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch build")
    load_before = os.getloadavg()[0]
    if args.mode == "loss":
        headers, rows = run_loss_mode(args)
    elif args.mode == "plan":
        headers, rows = run_plan_mode(args)
    else:
        headers, rows = run_model_mode(args)
    load_after = os.getloadavg()[0]
    print(f"machine: {machine_description(args.device)}; torch {torch.__version__}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"repeats: {args.repeats} round-robin after {args.warmup} warm-up round(s); "
          f"1-min load average {load_before:.1f} before, {load_after:.1f} after\n")
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
