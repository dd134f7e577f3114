"""detectron2's own engine with our registered model (tools/train_net_d2.py): DefaultTrainer
trains it on a dataset registered in detectron2's DatasetCatalog, COCOEvaluator scores it,
DefaultPredictor and Visualizer run on an image, --resume and --eval-only work, and
checkpoints move between detectron2's DetectionCheckpointer, our Checkpointer and AdelaiDet."""

import copy
import json
import pickle

import cv2
import numpy as np
import pytest
import torch

from ..conftest import REPO, load_tool
from .d2_helpers import SKIP_REASON, register_polygon_dataset

pytest.importorskip("detectron2", reason=SKIP_REASON)

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog  # noqa: E402
from detectron2.engine import DefaultPredictor, default_argument_parser  # noqa: E402
from detectron2.evaluation import COCOEvaluator  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

from condinst_percep.checkpoint import Checkpointer, caffe2_resnet_name  # noqa: E402
from condinst_percep.d2 import condinst_cfg, from_d2_inputs, to_d2_instances  # noqa: E402
from condinst_percep.modeling import build_model as build_our_model  # noqa: E402
from condinst_percep.structures import Instances  # noqa: E402

CONFIG = str(REPO / "configs/Quickstart/CondInst_shapes.yaml")
TINY = [
    "MODEL.META_ARCHITECTURE", "CondInstPercep",
    # detectron2's (and AdelaiDet's) ResNet builder needs R-18's own widths.
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "64", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.FCOS.NUM_CLS_CONVS", "1", "MODEL.FCOS.NUM_BOX_CONVS", "1",
    "MODEL.CONDINST.MASK_BRANCH.CHANNELS", "16", "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS", "1",
    # Low enough that an untrained model still returns detections to draw and score.
    "MODEL.FCOS.INFERENCE_TH_TEST", "0.0",
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01",
    "SOLVER.WARMUP_ITERS", "5", "SOLVER.STEPS", "(15,)", "SOLVER.MAX_ITER", "20",
    "SOLVER.CHECKPOINT_PERIOD", "10", "TEST.EVAL_PERIOD", "0", "SEED", "0",
]


def run(train_net, output_dir, *flags, opts=()):
    args = default_argument_parser().parse_args(
        ["--config-file", CONFIG, *flags, *TINY,
         "DATASETS.TRAIN", "('d2_engine_train',)", "DATASETS.TEST", "('d2_engine_val',)",
         "OUTPUT_DIR", str(output_dir), *opts]
    )
    return train_net.main(args), train_net.setup(args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """20 iterations of DefaultTrainer (tools/train_net_d2.py), then --eval-only on the result."""
    root = tmp_path_factory.mktemp("d2_engine")
    register_polygon_dataset("d2_engine_train", str(root / "train"), 8, seed=0, min_size=96, max_size=128)
    register_polygon_dataset("d2_engine_val", str(root / "val"), 3, seed=1, min_size=96, max_size=128)
    train_net = load_tool("train_net_d2")
    _, cfg = run(train_net, root / "out")
    final = root / "out" / "model_final.pth"
    results, _ = run(train_net, root / "out", "--eval-only", opts=["MODEL.WEIGHTS", str(final)])
    return train_net, cfg, root, results


def test_default_trainer_trains_20_iterations(trained):
    _, cfg, root, _ = trained
    with open(root / "out" / "metrics.json") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    iterations = [m["iteration"] for m in lines if "total_loss" in m]
    assert iterations[-1] == 19
    for m in lines:
        if "total_loss" in m:
            assert {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"} <= set(m)
            assert np.isfinite(m["total_loss"])
    ckpt = torch.load(root / "out" / "model_final.pth", weights_only=False)
    assert ckpt["iteration"] == 19 and {"model", "trainer"} <= set(ckpt)  # trainer: optimizer, scheduler
    assert (root / "out" / "model_0000009.pth").is_file()


def test_coco_evaluator_scores_it(trained):
    *_, results = trained
    assert set(results) == {"bbox", "segm"}  # one test set: its results, not keyed by name
    for task in ("bbox", "segm"):
        ap = results[task]["AP"]
        assert 0.0 <= ap <= 100.0


def test_coco_evaluator_gives_100_ap_to_the_ground_truth_through_our_outputs(trained):
    """Our outputs, converted by to_d2_instances, in the format COCOEvaluator scores: the
    ground truth (as our model's output) scores 100 box and mask AP."""
    _, cfg, root, _ = trained
    evaluator = COCOEvaluator("d2_engine_val", tasks=("bbox", "segm"), output_dir=str(root / "gt_eval"))
    evaluator.reset()
    mapper = DatasetMapper(cfg, is_train=True)  # the GT of every image, at the original size
    for record in DatasetCatalog.get("d2_engine_val"):
        x = from_d2_inputs([mapper(copy.deepcopy(record))])[0]
        gt = x["instances"]
        assert x["image"].shape[-2:] != (record["height"], record["width"])  # resized
        # back to the original size, as CondInst.postprocess does
        masks = torch.nn.functional.interpolate(
            gt.gt_masks[:, None].float(), size=(record["height"], record["width"]), mode="nearest"
        )[:, 0] > 0.5
        sx, sy = record["width"] / x["image"].shape[-1], record["height"] / x["image"].shape[-2]
        ours = Instances(
            (record["height"], record["width"]),
            pred_boxes=gt.gt_boxes * torch.tensor([sx, sy, sx, sy]),
            scores=torch.ones(len(gt)), pred_classes=gt.gt_classes, pred_masks=masks,
        )
        evaluator.process([record], [{"instances": to_d2_instances(ours)}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] > 95.0
    assert results["segm"]["AP"] > 85.0  # nearest-neighbour resizing of the masks


def test_resume_continues_from_last_checkpoint(trained):
    train_net, cfg, root, _ = trained
    before = torch.load(root / "out" / "model_final.pth", weights_only=False)["model"]
    # MAX_ITER 20 is reached already: --resume restores iteration 20 and trains no further.
    run(train_net, root / "out", "--resume")
    after = torch.load(root / "out" / "model_final.pth", weights_only=False)
    assert after["iteration"] == 19
    for k in before:
        assert torch.equal(before[k], after["model"][k]), k


def predictor_cfg(trained):
    _, cfg, root, _ = trained
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(root / "out" / "model_final.pth")
    return cfg


def test_default_predictor_and_visualizer(trained, tmp_path):
    cfg = predictor_cfg(trained)
    # 20 iterations leave every mask below 0.5: the controller's last output is the bias of the
    # dynamic head's last layer, raising it by 2 raises every mask logit by 2.
    ckpt = torch.load(cfg.MODEL.WEIGHTS, weights_only=False)
    ckpt["model"]["controller.bias"][-1] += 2.0
    torch.save(ckpt, tmp_path / "shifted.pth")
    cfg.MODEL.WEIGHTS = str(tmp_path / "shifted.pth")
    record = DatasetCatalog.get("d2_engine_val")[0]
    image = cv2.imread(record["file_name"])
    outputs = DefaultPredictor(cfg)(image)
    inst = outputs["instances"]
    assert inst.image_size == image.shape[:2]
    assert type(inst.pred_boxes).__name__ == "Boxes" and len(inst) > 0
    assert inst.pred_masks.shape == (len(inst), *image.shape[:2])
    # The predictor (float input, its own resize) agrees with the model on the mapped record.
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    with torch.no_grad():
        direct = model([DatasetMapper(cfg, is_train=False)(copy.deepcopy(record))])[0]["instances"]
    torch.testing.assert_close(direct.scores, inst.scores)
    assert torch.equal(direct.pred_masks, inst.pred_masks)

    areas = inst.pred_masks.flatten(1).sum(1)
    top = inst[areas.argsort(descending=True)[:3]].to("cpu")
    assert bool(top.pred_masks.any())
    vis = Visualizer(image[:, :, ::-1], MetadataCatalog.get("d2_engine_val"))
    drawn = vis.draw_instance_predictions(top).get_image()
    assert drawn.shape == image.shape
    changed = (drawn.astype(int) != image[:, :, ::-1].astype(int)).any(axis=2)
    union = top.pred_masks.any(dim=0).numpy()
    assert changed[union].mean() > 0.5


def test_detectron2_checkpoint_loads_in_our_engine_and_back(trained, tmp_path):
    cfg = predictor_cfg(trained)
    d2_model = build_model(cfg).eval()
    DetectionCheckpointer(d2_model).load(cfg.MODEL.WEIGHTS)
    record = DatasetMapper(cfg, is_train=False)(copy.deepcopy(DatasetCatalog.get("d2_engine_val")[1]))

    # detectron2's checkpoint -> our engine's Checkpointer, every key loaded.
    ours = build_our_model(condinst_cfg(cfg)).eval()
    checkpointer = Checkpointer(ours, str(tmp_path))
    checkpointer.load(cfg.MODEL.WEIGHTS)
    report = checkpointer.last_report
    assert not report.missing and not report.unexpected and not report.mismatched
    with torch.no_grad():
        a = d2_model([copy.deepcopy(record)])[0]["instances"]
        b = ours([copy.deepcopy(record)])[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes) and torch.equal(a.pred_masks, b.pred_masks)

    # our engine's checkpoint -> detectron2's DetectionCheckpointer, into our model and AdelaiDet's.
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01)
    checkpointer.save("ours")
    for arch in ("CondInstPercep", "CondInst"):
        if arch == "CondInst":
            pytest.importorskip("adet", reason="AdelaiDet is not importable")
        c = cfg.clone()
        c.MODEL.META_ARCHITECTURE = arch
        model = build_model(c)
        DetectionCheckpointer(model).load(str(tmp_path / "ours.pth"))
        loaded = model.state_dict()
        assert set(loaded) == set(ours.state_dict()), arch
        for k, v in ours.state_dict().items():
            assert torch.equal(loaded[k], v), (arch, k)


def caffe2_blobs(backbone_state: dict, depth_blocks=(2, 2, 2, 2)) -> dict:
    """The backbone as an MSRA/Caffe2 ImageNet .pkl holds it (``R-50.pkl``'s naming), built by
    inverting our name mapping over every blob name the format uses."""
    names = ["conv1_w", "res_conv1_bn_s", "res_conv1_bn_b"]
    for stage, blocks in zip(range(2, 6), depth_blocks):
        for b in range(blocks):
            for branch in ("branch2a", "branch2b", "branch2c", "branch1"):
                names += [f"res{stage}_{b}_{branch}_w", f"res{stage}_{b}_{branch}_bn_s",
                          f"res{stage}_{b}_{branch}_bn_b"]
    blobs = {}
    for name in names:
        ours = caffe2_resnet_name(name)
        if ours in backbone_state:
            blobs[name] = backbone_state[ours].numpy().copy()
    return blobs


def test_detection_checkpointer_loads_msra_caffe2_pkl(trained, tmp_path):
    """What detectron2://ImageNetPretrained/MSRA/R-50.pkl is (no download in tests): a Caffe2
    blob dict, renamed by detectron2's heuristics into our registered model's backbone."""
    _, cfg, _, _ = trained
    source = build_model(cfg).state_dict()
    blobs = caffe2_blobs({k: v + torch.rand_like(v) for k, v in source.items() if v.is_floating_point()})
    parameters = [k for k in source if k.startswith("backbone.bottom_up.") and k.endswith(("weight", "bias"))]
    assert len(blobs) == len(parameters) == 60  # every conv and norm parameter
    path = tmp_path / "R-18-c2.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(path))
    state = model.state_dict()
    for name, value in blobs.items():
        assert np.array_equal(state[caffe2_resnet_name(name)].numpy(), value), name


def test_default_trainer_trains_adelaidet_condinst_with_our_head(trained, tmp_path):
    """The third way to train: AdelaiDet's CondInst with our perceptual head, detectron2's
    DefaultTrainer; loss_percep is logged beside AdelaiDet's losses."""
    pytest.importorskip("adet", reason="AdelaiDet is not importable")
    train_net = trained[0]
    percep = ["MODEL.META_ARCHITECTURE", "CondInstPercepAdelaiDet", "MODEL.PERCEP.ENABLED", "True",
              "MODEL.CONDINST.MASK_HEAD.NAME", "PercepMaskHead", "MODEL.PERCEP.TARGET", "gt",
              "MODEL.PERCEP.STRUCTURE", "(1, 1, 1, 1, 1)", "MODEL.PERCEP.WIDTHS", "(8, 16, 32, 64, 64)",
              "SOLVER.MAX_ITER", "4", "DATASETS.TEST", "()"]
    run(train_net, tmp_path, opts=percep)
    with open(tmp_path / "metrics.json") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    assert lines[-1]["iteration"] == 3
    assert lines[-1]["loss_percep"] > 0 and np.isfinite(lines[-1]["total_loss"])
    state = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]
    assert set(state) == set(build_model(trained[1]).state_dict())  # AdelaiDet's = ours
