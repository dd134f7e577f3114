"""Default configuration: detectron2's keys that CondInst reads, plus AdelaiDet's additions.

Names and default values follow detectron2 0.6 (``detectron2/config/defaults.py``) and AdelaiDet
(``adet/config/defaults.py``) so that AdelaiDet's CondInst YAMLs merge unchanged. Two deliberate
differences:

* The six keys that ``Base-CondInst.yaml`` sets to select the architecture
  (``MODEL.META_ARCHITECTURE``, ``MODEL.MASK_ON``, ``MODEL.BACKBONE.NAME``,
  ``MODEL.RESNETS.OUT_FEATURES``, ``MODEL.FPN.IN_FEATURES``, ``MODEL.PROPOSAL_GENERATOR.NAME``)
  default to CondInst's values, because this package builds nothing else. Every AdelaiDet CondInst
  YAML sets them to these same values, so merged configs are identical to AdelaiDet's.
* detectron2's subtrees for other meta-architectures (RPN, ROI heads, RetinaNet, keypoints,
  semantic/panoptic segmentation) are absent: setting one of their keys fails loudly as an
  unknown key instead of being silently ignored.

Keys of AdelaiDet features that are not implemented (BoxInst, MobileNet, deformable convs,
anti-aliasing) exist so that AdelaiDet YAMLs load; the checks of the components
(``condinst_percep.engine.validate_cfg``) refuse a config that asks for any of them.
``MODEL.BiFPN.*`` and ``MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON`` are read by the BiFPN
backbone and the mask branch.
"""
from .config import CfgNode as CN

_C = CN()
_C.VERSION = 2

# ---------------------------------------------------------------------------------------------
# MODEL
# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.LOAD_PROPOSALS = False
_C.MODEL.MASK_ON = True
_C.MODEL.KEYPOINT_ON = False
_C.MODEL.DEVICE = "cuda"
_C.MODEL.META_ARCHITECTURE = "CondInst"
# A local path, an http(s) URL or a "detectron2://" model-zoo path (see condinst_percep.checkpoint).
_C.MODEL.WEIGHTS = ""
# MSRA (Caffe2) ImageNet weights: BGR pixels in 0-255, mean subtracted, std 1.
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
# AdelaiDet: MobileNetV2 bottom-up instead of ResNet (not implemented).
_C.MODEL.MOBILENET = False

_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_fcos_resnet_fpn_backbone"
# Stages up to and including this one are frozen: 0 none, 1 the stem, 2 stem and res2, ...
_C.MODEL.BACKBONE.FREEZE_AT = 2
# AdelaiDet: anti-aliased (blur-pool) ResNet (not implemented).
_C.MODEL.BACKBONE.ANTI_ALIAS = False

_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
_C.MODEL.FPN.OUT_CHANNELS = 256
_C.MODEL.FPN.NORM = ""
_C.MODEL.FPN.FUSE_TYPE = "sum"

_C.MODEL.PROPOSAL_GENERATOR = CN()
_C.MODEL.PROPOSAL_GENERATOR.NAME = "FCOS"
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0

_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50
_C.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
_C.MODEL.RESNETS.NUM_GROUPS = 1
# "FrozenBN", "BN", "SyncBN", "nnSyncBN", "GN" (see condinst_percep.layers.get_norm).
_C.MODEL.RESNETS.NORM = "FrozenBN"
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# True for MSRA (Caffe2) weights, False for torchvision weights.
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
_C.MODEL.RESNETS.RES5_DILATION = 1
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]
_C.MODEL.RESNETS.DEFORM_MODULATED = False
_C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1
# AdelaiDet: deformable conv in every n-th block (not implemented; 1 = the plain builder).
_C.MODEL.RESNETS.DEFORM_INTERVAL = 1

# ---------------------------------------------------------------------------------------------
# AdelaiDet: FCOS
# ---------------------------------------------------------------------------------------------
_C.MODEL.FCOS = CN()
_C.MODEL.FCOS.NUM_CLASSES = 80
_C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
_C.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64, 128]
_C.MODEL.FCOS.PRIOR_PROB = 0.01
_C.MODEL.FCOS.INFERENCE_TH_TRAIN = 0.05
_C.MODEL.FCOS.INFERENCE_TH_TEST = 0.05
_C.MODEL.FCOS.NMS_TH = 0.6
_C.MODEL.FCOS.PRE_NMS_TOPK_TRAIN = 1000
_C.MODEL.FCOS.PRE_NMS_TOPK_TEST = 1000
_C.MODEL.FCOS.POST_NMS_TOPK_TRAIN = 100
_C.MODEL.FCOS.POST_NMS_TOPK_TEST = 100
# Extra levels computed from P5: 2 -> P6 and P7, 1 -> P6, 0 -> none.
_C.MODEL.FCOS.TOP_LEVELS = 2
_C.MODEL.FCOS.NORM = "GN"
_C.MODEL.FCOS.USE_SCALE = True
_C.MODEL.FCOS.BOX_QUALITY = "ctrness"
_C.MODEL.FCOS.THRESH_WITH_CTR = False
_C.MODEL.FCOS.LOSS_ALPHA = 0.25
_C.MODEL.FCOS.LOSS_GAMMA = 2.0
_C.MODEL.FCOS.LOSS_NORMALIZER_CLS = "fg"
_C.MODEL.FCOS.LOSS_WEIGHT_CLS = 1.0
_C.MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256, 512]
# Unused by AdelaiDet (ReLU is always applied); kept so its YAMLs load.
_C.MODEL.FCOS.USE_RELU = True
_C.MODEL.FCOS.USE_DEFORMABLE = False
_C.MODEL.FCOS.NUM_CLS_CONVS = 4
_C.MODEL.FCOS.NUM_BOX_CONVS = 4
_C.MODEL.FCOS.NUM_SHARE_CONVS = 0
_C.MODEL.FCOS.CENTER_SAMPLE = True
_C.MODEL.FCOS.POS_RADIUS = 1.5
_C.MODEL.FCOS.LOC_LOSS_TYPE = "giou"
_C.MODEL.FCOS.YIELD_PROPOSAL = False
_C.MODEL.FCOS.YIELD_BOX_FEATURES = False

# ---------------------------------------------------------------------------------------------
# AdelaiDet: CondInst
# ---------------------------------------------------------------------------------------------
_C.MODEL.CONDINST = CN()
_C.MODEL.CONDINST.MASK_OUT_STRIDE = 4
# Unused by AdelaiDet (BoxInst reads MODEL.BOXINST.BOTTOM_PIXELS_REMOVED); kept so YAMLs load.
_C.MODEL.CONDINST.BOTTOM_PIXELS_REMOVED = -1
# Per GPU (per forward call); -1 keeps every positive location.
_C.MODEL.CONDINST.MAX_PROPOSALS = -1
_C.MODEL.CONDINST.TOPK_PROPOSALS_PER_IM = -1

_C.MODEL.CONDINST.MASK_HEAD = CN()
_C.MODEL.CONDINST.MASK_HEAD.CHANNELS = 8
_C.MODEL.CONDINST.MASK_HEAD.NUM_LAYERS = 3
# Unused by AdelaiDet; kept so YAMLs load.
_C.MODEL.CONDINST.MASK_HEAD.USE_FP16 = False
_C.MODEL.CONDINST.MASK_HEAD.DISABLE_REL_COORDS = False

_C.MODEL.CONDINST.MASK_BRANCH = CN()
_C.MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS = 8
_C.MODEL.CONDINST.MASK_BRANCH.IN_FEATURES = ["p3", "p4", "p5"]
_C.MODEL.CONDINST.MASK_BRANCH.CHANNELS = 128
_C.MODEL.CONDINST.MASK_BRANCH.NORM = "BN"
_C.MODEL.CONDINST.MASK_BRANCH.NUM_CONVS = 4
# The "_sem" models' auxiliary semantic loss (not implemented).
_C.MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON = False

# ---------------------------------------------------------------------------------------------
# AdelaiDet features that are not implemented: accepted at their defaults, refused otherwise.
# ---------------------------------------------------------------------------------------------
_C.MODEL.BOXINST = CN()
_C.MODEL.BOXINST.ENABLED = False
_C.MODEL.BOXINST.BOTTOM_PIXELS_REMOVED = 10
_C.MODEL.BOXINST.PAIRWISE = CN()
_C.MODEL.BOXINST.PAIRWISE.SIZE = 3
_C.MODEL.BOXINST.PAIRWISE.DILATION = 2
_C.MODEL.BOXINST.PAIRWISE.WARMUP_ITERS = 10000
_C.MODEL.BOXINST.PAIRWISE.COLOR_THRESH = 0.3

_C.MODEL.TOP_MODULE = CN()
_C.MODEL.TOP_MODULE.NAME = "conv"
_C.MODEL.TOP_MODULE.DIM = 16

_C.MODEL.BiFPN = CN()
_C.MODEL.BiFPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
_C.MODEL.BiFPN.OUT_CHANNELS = 160
_C.MODEL.BiFPN.NUM_REPEATS = 6
_C.MODEL.BiFPN.NORM = ""

# ---------------------------------------------------------------------------------------------
# INPUT
# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
_C.INPUT.MIN_SIZE_TRAIN = (800,)
# "choice": one of MIN_SIZE_TRAIN; "range": uniform in [MIN_SIZE_TRAIN[0], MIN_SIZE_TRAIN[1]].
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
_C.INPUT.RANDOM_FLIP = "horizontal"
_C.INPUT.FORMAT = "BGR"
_C.INPUT.MASK_FORMAT = "polygon"
# AdelaiDet: horizontal flip during training (its mapper reads this, not RANDOM_FLIP).
_C.INPUT.HFLIP_TRAIN = True
_C.INPUT.IS_ROTATE = False

_C.INPUT.CROP = CN()
_C.INPUT.CROP.ENABLED = False
_C.INPUT.CROP.TYPE = "relative_range"
_C.INPUT.CROP.SIZE = [0.9, 0.9]
_C.INPUT.CROP.CROP_INSTANCE = True

# ---------------------------------------------------------------------------------------------
# DATASETS / DATALOADER
# ---------------------------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.PROPOSAL_FILES_TRAIN = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
_C.DATASETS.TEST = ()
_C.DATASETS.PROPOSAL_FILES_TEST = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
# --- bad-data policy (see docs/reliability.md) ---
# "error": a bad record or image stops the run with an error naming the file and annotation id.
# "skip": the image holding it is left out (at load time) or replaced (at map time), counted and
# logged. Defects with one obvious repair are fixed under both.
_C.DATALOADER.BAD_DATA_POLICY = "error"
# --- end bad-data policy ---

# ---------------------------------------------------------------------------------------------
# SOLVER
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
_C.SOLVER.BASE_LR_END = 0.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Total over all workers.
_C.SOLVER.IMS_PER_BATCH = 16
# When > 0 and different from the actual world size, IMS_PER_BATCH, BASE_LR, STEPS, MAX_ITER,
# WARMUP_ITERS, CHECKPOINT_PERIOD and TEST.EVAL_PERIOD are rescaled as in detectron2.
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
_C.SOLVER.BIAS_LR_FACTOR = 1.0
# None: biases use SOLVER.WEIGHT_DECAY.
_C.SOLVER.WEIGHT_DECAY_BIAS = None

_C.SOLVER.CLIP_GRADIENTS = CN()
_C.SOLVER.CLIP_GRADIENTS.ENABLED = False
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0

_C.SOLVER.AMP = CN()
_C.SOLVER.AMP.ENABLED = False
# Our addition: autocast dtype, "float16" (GPU) or "bfloat16" (GPU or CPU).
_C.SOLVER.AMP.DTYPE = "float16"

# ---------------------------------------------------------------------------------------------
# TEST
# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.EXPECTED_RESULTS = []
# Iterations between evaluations during training; 0 disables them.
_C.TEST.EVAL_PERIOD = 0
# Unused by CondInst, which keeps MODEL.FCOS.POST_NMS_TOPK_TEST detections; must stay 100.
_C.TEST.DETECTIONS_PER_IMAGE = 100

_C.TEST.AUG = CN()
_C.TEST.AUG.ENABLED = False
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_C.TEST.AUG.MAX_SIZE = 4000
_C.TEST.AUG.FLIP = True

_C.TEST.PRECISE_BN = CN()
_C.TEST.PRECISE_BN.ENABLED = False
_C.TEST.PRECISE_BN.NUM_ITER = 200

# ---------------------------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = "./output"
# Negative: a different seed per run (logged); otherwise fixed.
_C.SEED = -1
_C.CUDNN_BENCHMARK = False
_C.VIS_PERIOD = 0

_C.GLOBAL = CN()
_C.GLOBAL.HACK = 1.0

# --- perceptual CondInst (see docs/perceptual_condinst.md) ---
# The mask head class, looked up in condinst_percep.modeling.condinst.MASK_HEAD_REGISTRY.
# "PercepMaskHead" adds loss_percep and needs MODEL.PERCEP.ENABLED (and the reverse).
_C.MODEL.CONDINST.MASK_HEAD.NAME = "DynamicMaskHead"

# The generic perceptual loss on CondInst's stride-4 instance masks (Liu et al., CVPR 2021).
_C.MODEL.PERCEP = CN()
_C.MODEL.PERCEP.ENABLED = False
# λ: loss_percep = LOSS_WEIGHT * mean over instances of the embedding distance.
_C.MODEL.PERCEP.LOSS_WEIGHT = 0.1
# Convolutions per block of the frozen VGG-like network; (2, 2, 4, 4, 4) is VGG19.
_C.MODEL.PERCEP.STRUCTURE = (2, 2, 4, 4, 4)
_C.MODEL.PERCEP.WIDTHS = (64, 128, 256, 512, 512)
_C.MODEL.PERCEP.KERNEL_SIZE = 3
# "he" (fan-in, the paper's), "normal" N(0, INIT_SCALE), "uniform" U[-INIT_SCALE, INIT_SCALE],
# "xavier" (Xavier-normal).
_C.MODEL.PERCEP.INIT = "he"
# Only for INIT "normal" / "uniform"; 0.0 otherwise.
_C.MODEL.PERCEP.INIT_SCALE = 0.0
# One weight per block output; empty: the final block alone (the paper's default).
_C.MODEL.PERCEP.LAYER_WEIGHTS = ()
# Seed of the network's own generator: identical weights in every process and resumed run.
_C.MODEL.PERCEP.SEED = 0
# "teacher": soft masks of the frozen MODEL.TEACHER at the student's instances; "gt": GT bitmaps.
_C.MODEL.PERCEP.TARGET = "teacher"
# Instances embedded at a time (peak memory of the loss is one chunk's); 0: all at once.
_C.MODEL.PERCEP.CHUNK_SIZE = 16
# A local torchvision VGG state_dict (the paper's "T" variant, STRUCTURE naming a VGG); "": random.
_C.MODEL.PERCEP.PRETRAINED_VGG = ""
# Speed options of the loss (docs/perceptual_condinst.md). CROP_MARGIN >= 0: embed each instance
# inside the union of its GT box and its predicted box, grown by that many mask pixels (-1: no
# crop). Approximate for the student, whose sigmoid is small but not 0 outside the boxes.
_C.MODEL.PERCEP.CROP_MARGIN = -1
# Allow a CROP_MARGIN below the loss network's support radius (a different loss).
_C.MODEL.PERCEP.CROP_APPROXIMATE = False
# Precision of the loss network alone: "" the training's, "float32", "bfloat16" or "float16".
_C.MODEL.PERCEP.AUTOCAST = ""
# Run the loss network in channels_last (NHWC) memory format (same values; faster on the CPU).
_C.MODEL.PERCEP.CHANNELS_LAST = False

# The frozen teacher of MODEL.PERCEP.TARGET "teacher": a CondInst config (paths relative to the
# working directory) and its weights (path, URL or detectron2:// path; AdelaiDet .pth included).
_C.MODEL.TEACHER = CN()
_C.MODEL.TEACHER.CONFIG_FILE = ""
_C.MODEL.TEACHER.WEIGHTS = ""
# Precision of the teacher's no-grad forward: "" the training's (autocast if AMP is on),
# "float32", "bfloat16" or "float16". Not "": the soft targets are rounded (an approximation).
_C.MODEL.TEACHER.AUTOCAST = ""
# --- end perceptual CondInst ---
