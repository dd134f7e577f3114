"""PercepMaskHead: config refusals, the GT-target loss against a per-instance reference, the loss
network (random or torchvision VGG), crop-to-box and the speed keys. The teacher: test_teacher.py."""
import pytest
import torch

from condinst_percep.config import UnsupportedConfigError, get_cfg
from condinst_percep.engine import validate_cfg
from condinst_percep.modeling.condinst import DynamicMaskHead, PercepMaskHead
from condinst_percep.perceptual import PerceptualLoss, RandomPerceptualNet
from condinst_percep.structures import Instances
from tests.conftest import set_keys, tiny_cfg
from tests.modeling.references import naive_mask_logits
from tests.percep_helpers import STUDENT, tiny_percep_cfg


# ------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"MODEL.PERCEP.TARGET": "soft"}, "MODEL.PERCEP.TARGET = 'soft'"),
        ({"MODEL.TEACHER.CONFIG_FILE": ""}, "MODEL.TEACHER.CONFIG_FILE = ''"),
        ({"MODEL.TEACHER.WEIGHTS": ""}, "MODEL.TEACHER.WEIGHTS = ''"),
        ({"MODEL.PERCEP.STRUCTURE": (2, 0)}, "MODEL.PERCEP.STRUCTURE = (2, 0)"),
        ({"MODEL.PERCEP.WIDTHS": (4,)}, "MODEL.PERCEP.WIDTHS = (4,)"),
        ({"MODEL.PERCEP.KERNEL_SIZE": 4}, "MODEL.PERCEP.KERNEL_SIZE = 4"),
        ({"MODEL.PERCEP.INIT": "normal"}, "MODEL.PERCEP.INIT_SCALE = 0.0"),
        ({"MODEL.PERCEP.INIT": "orthogonal"}, "MODEL.PERCEP.INIT = 'orthogonal'"),
        ({"MODEL.PERCEP.LAYER_WEIGHTS": (1.0,)}, "MODEL.PERCEP.LAYER_WEIGHTS = (1.0,)"),
        ({"MODEL.PERCEP.CHUNK_SIZE": -1}, "MODEL.PERCEP.CHUNK_SIZE = -1"),
        ({"MODEL.PERCEP.LOSS_WEIGHT": -0.1}, "MODEL.PERCEP.LOSS_WEIGHT = -0.1"),
        ({"MODEL.PERCEP.PRETRAINED_VGG": "vgg.pth"}, "MODEL.PERCEP.PRETRAINED_VGG = 'vgg.pth'"),
        ({"MODEL.CONDINST.MASK_HEAD.NAME": "DynamicMaskHead"}, "needs 'PercepMaskHead'"),
        ({"MODEL.PERCEP.ENABLED": False}, "MODEL.PERCEP.ENABLED = False"),
        (
            {"MODEL.PERCEP.TARGET": "gt"},
            "MODEL.TEACHER.CONFIG_FILE = 't.yaml': would be ignored",
        ),
    ],
)
def test_config_refusals_name_key_and_value(changes, message):
    cfg = tiny_cfg(**STUDENT)
    cfg.MODEL.CONDINST.MASK_HEAD.NAME = "PercepMaskHead"
    cfg.MODEL.PERCEP.ENABLED = True
    cfg.MODEL.PERCEP.STRUCTURE, cfg.MODEL.PERCEP.WIDTHS = (1, 1), (4, 8)
    cfg.MODEL.TEACHER.CONFIG_FILE, cfg.MODEL.TEACHER.WEIGHTS = "t.yaml", "t.pth"
    validate_cfg(cfg)
    set_keys(cfg, changes)
    with pytest.raises(UnsupportedConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_cfg(cfg)


def test_defaults_are_the_papers_and_leave_condinst_plain():
    cfg = get_cfg()
    p = cfg.MODEL.PERCEP
    assert (p.ENABLED, p.LOSS_WEIGHT, tuple(p.STRUCTURE), p.INIT) == (False, 0.1, (2, 2, 4, 4, 4), "he")
    assert tuple(p.WIDTHS) == (64, 128, 256, 512, 512) and p.KERNEL_SIZE == 3
    assert cfg.MODEL.CONDINST.MASK_HEAD.NAME == "DynamicMaskHead"
    validate_cfg(cfg)


# --------------------------------------------------------------------------- head level
def _head_inputs(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask_feats = torch.randn(2, 8, 6, 7, generator=gen, requires_grad=True)
    params = (torch.randn(n, 169, generator=gen) * 0.5).requires_grad_(True)
    inst = Instances(
        (0, 0),
        locations=torch.tensor([[12.0, 20.0], [40.0, 8.0], [36.0, 28.0], [4.0, 44.0]])[:n],
        im_inds=torch.tensor([0, 1, 1, 0])[:n],
        fpn_levels=torch.tensor([0, 2, 1, 0])[:n],
        gt_inds=torch.tensor([2, 0, 0, 2])[:n],
        mask_head_params=params,
    )
    bitmasks = torch.zeros(3, 12, 14)
    bitmasks[0, 2:9, 3:10] = 1
    bitmasks[1, 5:12, 0:4] = 1
    bitmasks[2, 0:6, 6:14] = 1
    gts = [Instances((0, 0), gt_bitmasks=bitmasks[:2]), Instances((0, 0), gt_bitmasks=bitmasks[2:])]
    return mask_feats, params, inst, gts, bitmasks


def _gt_head(loss_weight=0.1):
    net = RandomPerceptualNet(1, structure=(1, 2), widths=(4, 8), seed=3)
    return PercepMaskHead(percep_loss=PerceptualLoss(net, loss_weight=loss_weight), target="gt")


def test_gt_loss_equals_per_instance_reference_and_scales_with_loss_weight():
    mask_feats, params, inst, gts, bitmasks = _head_inputs(4)
    head = _gt_head().train()
    losses = head(mask_feats, 8, inst, gts)
    assert set(losses) == {"loss_mask", "loss_percep"} and losses["loss_percep"].dtype == torch.float32

    logits = naive_mask_logits(params, inst.locations, inst.im_inds, inst.fpn_levels, mask_feats, 8)
    net = head.percep_loss.net
    terms = []
    for k in range(4):
        pred = net(logits[k : k + 1].sigmoid())[-1]
        target = net(bitmasks[inst.gt_inds[k]][None, None])[-1]
        terms.append(((pred - target) ** 2).mean())
    torch.testing.assert_close(losses["loss_percep"], 0.1 * torch.stack(terms).mean())

    tripled = _gt_head(loss_weight=0.3).train()(mask_feats, 8, inst, gts)
    torch.testing.assert_close(tripled["loss_percep"], 3 * losses["loss_percep"])
    torch.testing.assert_close(tripled["loss_mask"], losses["loss_mask"])


def test_no_instances_gives_a_connected_zero_and_inference_is_the_parents():
    mask_feats, params, inst, gts, _ = _head_inputs(0)
    head = _gt_head().train()
    losses = head(mask_feats, 8, inst, gts)
    assert float(losses["loss_percep"].detach()) == 0.0
    losses["loss_percep"].backward()
    assert mask_feats.grad is not None and params.grad is not None

    mask_feats, params, inst, gts, _ = _head_inputs(3)
    plain = DynamicMaskHead().eval()(mask_feats, 8, inst[:])
    ours = head.eval()(mask_feats, 8, inst[:])
    assert torch.equal(ours.pred_global_masks, plain.pred_global_masks)


def test_loss_network_is_neither_state_nor_parameter_but_follows_to():
    head = _gt_head()
    assert head.state_dict().keys() == DynamicMaskHead().state_dict().keys()
    assert list(head.parameters()) == [] and len(list(head.buffers())) == 2
    head.to(torch.float64)
    assert head.percep_loss.net.dtype == torch.float64


def test_pretrained_vgg_variant_is_built_from_a_torchvision_file(tmp_path):
    """The paper's "T" variant: torchvision VGG11 features behind a 1×1 projection."""
    gen = torch.Generator().manual_seed(0)
    state, index, c_in = {}, 0, 3
    for num_convs, width in zip((1, 1, 2, 2, 2), (64, 128, 256, 512, 512)):
        for _ in range(num_convs):
            state[f"features.{index}.weight"] = torch.randn(width, c_in, 3, 3, generator=gen) * 0.01
            state[f"features.{index}.bias"] = torch.zeros(width)
            index, c_in = index + 2, width
        index += 1
    path = tmp_path / "vgg11.pth"
    torch.save(state, path)
    cfg = tiny_percep_cfg("gt")
    cfg.MODEL.PERCEP.STRUCTURE, cfg.MODEL.PERCEP.WIDTHS = (1, 1, 2, 2, 2), (64, 128, 256, 512, 512)
    cfg.MODEL.PERCEP.PRETRAINED_VGG = str(path)
    net = PercepMaskHead(**PercepMaskHead.from_config(cfg)).percep_loss.net
    assert net.init == "torchvision:vgg11" and net.in_channels == 1
    assert torch.equal(net.blocks[4][1].weight, state["features.18.weight"])


# ------------------------------------------------------------------------ speed options
def _crop_case(concentrated: bool):
    """Logits (3, 1, 32, 32) over a 128-px canvas (mask stride 4), their instances and GTs.

    Each instance's predicted box (input pixels) is given; reg_pred is derived from it at the
    instance's location. With ``concentrated`` the logits are -30 outside the union of the GT
    and predicted boxes (so the prediction mass reaches into the predicted box beyond the GT).
    """
    gt_boxes = torch.tensor([[16.0, 16.0, 64.0, 56.0], [70.0, 8.0, 120.0, 40.0], [8.0, 60.0, 48.0, 120.0]])
    bitmasks = torch.zeros(3, 32, 32)
    for g, (x0, y0, x1, y1) in enumerate(gt_boxes.tolist()):
        bitmasks[g, int(y0) // 4 : int(y1) // 4, int(x0) // 4 : int(x1) // 4] = 1
    gts = [
        Instances((128, 128), gt_boxes=gt_boxes[:2], gt_bitmasks=bitmasks[:2]),
        Instances((128, 128), gt_boxes=gt_boxes[2:], gt_bitmasks=bitmasks[2:]),
    ]
    pred_boxes = torch.tensor([[24.0, 20.0, 80.0, 60.0], [72.0, 4.0, 112.0, 44.0], [4.0, 64.0, 40.0, 104.0]])
    locations = torch.tensor([[40.0, 36.0], [92.0, 20.0], [20.0, 84.0]])
    fpn_levels = torch.tensor([0, 1, 0])
    strides = torch.tensor([8.0, 16.0, 32.0, 64.0, 128.0])[fpn_levels][:, None]
    reg_pred = torch.cat([locations - pred_boxes[:, :2], pred_boxes[:, 2:] - locations], 1) / strides
    inst = Instances(
        (0, 0), gt_inds=torch.tensor([0, 1, 2]), locations=locations, fpn_levels=fpn_levels,
        reg_pred=reg_pred, im_inds=torch.tensor([0, 0, 1]),
    )
    logits = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2
    if concentrated:
        union = torch.cat([torch.minimum(gt_boxes[:, :2], pred_boxes[:, :2]),
                           torch.maximum(gt_boxes[:, 2:], pred_boxes[:, 2:])], 1)
        centres = torch.arange(32) * 4 + 2.0  # input pixel sampled by each mask pixel
        for k, (x0, y0, x1, y1) in enumerate(union.tolist()):
            rows = (centres >= y0) & (centres < y1)
            cols = (centres >= x0) & (centres < x1)
            logits[k, 0][~(rows[:, None] & cols[None, :])] = -30.0
    return logits.requires_grad_(True), inst, gts


def _percep_head(**keys):
    cfg = tiny_percep_cfg("gt")
    cfg.MODEL.PERCEP.STRUCTURE, cfg.MODEL.PERCEP.WIDTHS = (1, 1, 1), (4, 8, 8)
    for key, value in keys.items():
        cfg.MODEL.PERCEP[key] = value
    return PercepMaskHead(**PercepMaskHead.from_config(cfg)).train()


def test_cropped_loss_equals_uncropped_when_predictions_stay_in_their_boxes():
    full = _percep_head()
    radius = full.percep_loss.net.support_radius(2)
    cropped = _percep_head(CROP_MARGIN=radius)
    assert cropped.percep_loss.crop_margin == radius and full.percep_loss.crop_margin is None
    for concentrated in (True, False):
        logits, inst, gts = _crop_case(concentrated)
        ref = full.perceptual_loss(logits, inst, gts)
        (ref_grad,) = torch.autograd.grad(ref, logits)
        value = cropped.perceptual_loss(logits, inst, gts)
        (grad,) = torch.autograd.grad(value, logits)
        rel = abs(value.item() - ref.item()) / ref.item()
        if concentrated:
            assert rel < 1e-3
            torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-3 * ref_grad.abs().max())
        else:  # mass outside the boxes is dropped: the crop is then an approximation
            assert rel > 1e-3


def test_speed_keys_load_from_yaml_and_bad_values_name_key_and_value(tmp_path):
    radius = _percep_head().percep_loss.net.support_radius(2)
    path = tmp_path / "speed.yaml"
    path.write_text(
        f"MODEL:\n  PERCEP:\n    CROP_MARGIN: {radius - 1}\n    CROP_APPROXIMATE: True\n"
        '    AUTOCAST: "bfloat16"\n    CHANNELS_LAST: True\n'
    )
    cfg = tiny_percep_cfg("gt")
    cfg.MODEL.PERCEP.STRUCTURE, cfg.MODEL.PERCEP.WIDTHS = (1, 1, 1), (4, 8, 8)
    cfg.merge_from_file(str(path))
    loss = PercepMaskHead(**PercepMaskHead.from_config(cfg)).percep_loss
    assert (loss.crop_margin, loss.crop_approximate) == (radius - 1, True)
    assert (loss.autocast_dtype, loss.channels_last) == (torch.bfloat16, True)

    with pytest.raises(ValueError, match=r"MODEL.PERCEP: crop_margin=.* below the support radius"):
        _percep_head(CROP_MARGIN=radius - 1)
    with pytest.raises(ValueError, match=r"MODEL.PERCEP.CROP_MARGIN must be int, got 2.5"):
        _percep_head(CROP_MARGIN=2.5)
    with pytest.raises(ValueError, match=r"MODEL.PERCEP.CHANNELS_LAST must be bool, got 'yes'"):
        _percep_head(CHANNELS_LAST="yes")
    with pytest.raises(ValueError, match=r"MODEL.PERCEP.AUTOCAST must be one of .* got 'half'"):
        _percep_head(AUTOCAST="half")
