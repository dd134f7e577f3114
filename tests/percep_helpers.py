"""The perceptual tests' student config, inputs and AdelaiDet-format teacher files."""
import torch

from condinst_percep.modeling import CondInst
from condinst_percep.structures import Instances
from tests.conftest import tiny_cfg


# The perceptual tests' student: tiny_cfg with a 16-channel stem and res2, a 32-channel FPN and
# mask branch, 3 classes, at most 9 proposals, every detection kept (up to 20 per image).
STUDENT = {
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 16,
    "MODEL.FPN.OUT_CHANNELS": 32,
    "MODEL.FCOS.NUM_CLASSES": 3,
    "MODEL.FCOS.INFERENCE_TH_TEST": 0.0,
    "MODEL.FCOS.POST_NMS_TOPK_TEST": 20,
    "MODEL.CONDINST.MAX_PROPOSALS": 9,
    "MODEL.CONDINST.MASK_BRANCH.CHANNELS": 32,
}


def tiny_percep_cfg(target, teacher_config="", teacher_weights="", **overrides):
    """The STUDENT with the perceptual loss on (a 2-block loss network, chunks of 4)."""
    cfg = tiny_cfg(**{**STUDENT, **overrides})
    cfg.MODEL.CONDINST.MASK_HEAD.NAME = "PercepMaskHead"
    cfg.MODEL.PERCEP.ENABLED = True
    cfg.MODEL.PERCEP.STRUCTURE = (1, 2)
    cfg.MODEL.PERCEP.WIDTHS = (8, 16)
    cfg.MODEL.PERCEP.CHUNK_SIZE = 4
    cfg.MODEL.PERCEP.TARGET = target
    cfg.MODEL.TEACHER.CONFIG_FILE = teacher_config
    cfg.MODEL.TEACHER.WEIGHTS = teacher_weights
    return cfg


def write_teacher(folder, **overrides):
    """Writes a teacher config (R-34, wider than the student) and an AdelaiDet-style checkpoint
    (``{"model": state_dict, "iteration": ...}`` without ``mask_head._iter``, as in the model
    zoo) into ``folder``; returns (config path, weights path)."""
    cfg = tiny_cfg(**{**STUDENT, "MODEL.RESNETS.DEPTH": 34, "MODEL.RESNETS.RES2_OUT_CHANNELS": 32, **overrides})
    config_file = folder / "teacher.yaml"
    config_file.write_text(cfg.dump())
    torch.manual_seed(1234)
    model = CondInst(**CondInst.from_config(cfg))
    # Larger controller weights than its init, so that the teacher's masks are not uniform.
    torch.nn.init.normal_(model.controller.weight, std=0.05)
    state = {k: v for k, v in model.state_dict().items() if k != "mask_head._iter"}
    weights = folder / "teacher_final.pth"
    torch.save({"model": state, "iteration": 269999}, weights)
    return str(config_file), str(weights)


def make_batch(with_instances=True, seed=0):
    """Two images (100×120, 90×130) with two objects each (one of class 0/2, boxes = masks)."""
    batch = []
    for i, (h, w) in enumerate(((100, 120), (90, 130))):
        gen = torch.Generator().manual_seed(seed + i)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, 10:40, 20:60] = True
        masks[1, 5:70, 5:30] = True
        image[:, masks[0]] = 200
        boxes = torch.tensor([[20.0, 10.0, 60.0, 40.0], [5.0, 5.0, 30.0, 70.0]])
        record = {"image": image, "height": h, "width": w}
        if with_instances:
            record["instances"] = Instances(
                (h, w), gt_boxes=boxes, gt_classes=torch.tensor([0, 2]), gt_masks=masks
            )
        batch.append(record)
    return batch
