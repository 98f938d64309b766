"""Every config key, its default and its meaning. Keys follow detectron2's names where one exists."""
from .config import CfgNode as CN

_C = CN()
_C.VERSION = 1

# ---------------------------------------------------------------------------------------------
# MODEL
# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
# "GeneralizedRCNN" (Faster R-CNN), "Classifier" (ImageNet/CIFAR nets), "Localizer" (Appendix C).
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
# Path or URL of initial weights: a resnet_det checkpoint, a torchvision ImageNet state_dict, a
# detectron2 .pkl/.pth, or "" for random init. See tools/convert_weights.py.
_C.MODEL.WEIGHTS = ""
# "cpu", "cuda" or "cuda:N". tools/train_net.py picks cuda when available and this is "auto".
_C.MODEL.DEVICE = "auto"
# Per-channel mean/std in the 0-255 range, in the order of INPUT.FORMAT. These are torchvision's
# ImageNet values in BGR order; MSRA/Caffe2 weights use std 1 and mean [103.53, 116.28, 123.675].
_C.MODEL.PIXEL_MEAN = [103.53, 116.28, 123.675]
_C.MODEL.PIXEL_STD = [57.375, 57.12, 58.395]
# Compile the backbone with torch.compile (speed only; outputs equal within float tolerance).
_C.MODEL.COMPILE = False
# Store activations as channels_last (NHWC); faster for convolutions on most CPUs and on GPUs.
_C.MODEL.CHANNELS_LAST = False
# Fold each FrozenBN (and eval-mode BN) into the conv before it, conv(x, W * s) + b: the same function
# in one pass instead of three, in training too (gradients still reach W). Where no gradient is needed,
# on a CPU with float32 NHWC activations, each residual block also runs every conv with its ReLU (and
# the residual addition) as one oneDNN call. State_dict keys are unchanged. Was MODEL.FUSE_FROZEN_BN
# (still accepted, with a warning). See resnet_det/modeling/fusion.py and benchmarks/RESULTS.md.
_C.MODEL.FUSE_CONV_BN_RELU = True

_C.MODEL.BACKBONE = CN()
# Registered builder name: build_resnet_backbone (C4), build_resnet_fpn_backbone, or your own.
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"
# Freeze the first k stages: 0 none, 1 stem, 2 stem+res2, ... 5 everything (Appendix A: the
# detection fine-tuning keeps the low layers and BN statistics from ImageNet pretraining).
_C.MODEL.BACKBONE.FREEZE_AT = 2

_C.MODEL.RESNETS = CN()
# One of 18, 34, 50, 101, 152 (Table 1).
_C.MODEL.RESNETS.DEPTH = 50
# Which stage outputs the backbone returns: any of stem, res2, res3, res4, res5.
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]
# "FrozenBN" (detection default: statistics from pretraining), "BN", "SyncBN", "GN".
_C.MODEL.RESNETS.NORM = "FrozenBN"
# True: stride 2 in the first 1x1 of a bottleneck (paper / MSRA / detectron2 weights); False: in
# the 3x3 (torchvision weights). Basic blocks ignore it.
_C.MODEL.RESNETS.STRIDE_IN_1X1 = False
# Channels of the stem conv and of res2's output; 0 derives res2's from the block type (Table 1:
# 64 for basic blocks, 256 = 4 x 64 for bottlenecks). Later stages double it.
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 0
# Grouped convolutions (ResNeXt); 1 and 64 give the paper's ResNet.
_C.MODEL.RESNETS.NUM_GROUPS = 1
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# Dilation of res5 (1 or 2); with 2, res5 keeps stride 16. Backbones that run res5 only (FPN): the C4
# res5 box head (Res5ROIHead) is refused with 2, as detectron2 ignores the key there.
_C.MODEL.RESNETS.RES5_DILATION = 1
# Table 3 shortcut option: "A" zero-pad identity, "B" projection where shape changes, "C" always.
_C.MODEL.RESNETS.SHORTCUT = "B"
# True builds the plain baseline (the same stack without shortcuts, Sec. 4.1).
_C.MODEL.RESNETS.PLAIN = False
# Zero-init the last BN gamma of each residual branch, so every block starts as identity.
_C.MODEL.RESNETS.ZERO_INIT_RESIDUAL = False

_C.MODEL.FPN = CN()
# Backbone stage outputs the FPN consumes (bottom-up), and its output channels.
_C.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
_C.MODEL.FPN.OUT_CHANNELS = 256
# "" (torchvision's FPN has no norm in the lateral/output convs).
_C.MODEL.FPN.NORM = ""

_C.MODEL.ANCHOR_GENERATOR = CN()
# Anchor sizes (pixels) per feature map; C4 uses one map with all five sizes.
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
# Height/width ratios; one list is shared by every feature map.
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
# "torchvision": cell anchors rounded to whole pixels, a map's stride = padded image size // map size
# (torchvision's AnchorGenerator). "detectron2": exact cell anchors and the backbone's strides
# (detectron2's DefaultAnchorGenerator). See modeling/detector/detectron2_style.py.
_C.MODEL.ANCHOR_GENERATOR.STYLE = "torchvision"
# Centre of the first anchor, as a fraction of the stride (detectron2's key; "detectron2" style only).
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0

_C.MODEL.RPN = CN()
# Feature maps the RPN runs on: ["res4"] for C4, ["p2", ..., "p6"] for FPN.
_C.MODEL.RPN.IN_FEATURES = ["res4"]
# Proposals kept per feature map before NMS, and in total after NMS (train / test).
# Faster R-CNN's (and the paper's) C4 test setting keeps 300 proposals.
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 300
_C.MODEL.RPN.NMS_THRESH = 0.7
# Anchors with IoU < IOU_THRESHOLDS[0] are negative, >= IOU_THRESHOLDS[1] positive.
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
# Proposals with a smaller side (pixels, in the resized image) are dropped.
_C.MODEL.RPN.MIN_SIZE = 1e-3
# Proposal objectness score threshold (torchvision's rpn_score_thresh; "torchvision" POSTPROCESS only:
# a value other than 0 is refused under "detectron2", which has no such threshold).
_C.MODEL.RPN.SCORE_THRESH = 0.0
# Proposal selection after the per-level top-k. "torchvision": drop sides < MIN_SIZE, NMS on sigmoid
# scores. "detectron2": drop non-finite boxes and sides <= MIN_SIZE (0: empty boxes only), NMS on logits.
_C.MODEL.RPN.POSTPROCESS = "torchvision"
# Training loss (modeling/detector/detectron2_style.py). Defaults are torchvision's; detectron2's model
# zoo uses SMOOTH_L1_BETA 0.0 and LOSS_NORMALIZER "batch_size" (configs/detectron2_zoo/).
# Box regression loss: "smooth_l1" (on the encoded deltas) or "giou" / "diou" / "ciou" (on decoded boxes).
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"
# Smooth L1's beta (0 = L1 loss); torchvision's is 1/9.
_C.MODEL.RPN.SMOOTH_L1_BETA = 1.0 / 9
# Both RPN losses are multiplied by LOSS_WEIGHT, the box loss also by BBOX_REG_LOSS_WEIGHT (detectron2's).
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
# What the summed RPN losses are divided by: "sampled" (torchvision: the number of sampled anchors; the
# objectness loss is their mean) or "batch_size" (detectron2: BATCH_SIZE_PER_IMAGE x images, the config
# value, whatever the number sampled).
_C.MODEL.RPN.LOSS_NORMALIZER = "sampled"

_C.MODEL.ROI_HEADS = CN()
# Number of object classes, background excluded (detectron2's convention).
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80
# Feature maps RoI pooling reads: ["res4"] for C4, ["p2", "p3", "p4", "p5"] for FPN.
_C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
# A proposal with IoU >= this with a ground-truth box is foreground.
_C.MODEL.ROI_HEADS.IOU_THRESHOLD = 0.5
# Test-time: minimum score, per-class NMS threshold, detections kept per image.
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE = 100
# Test-time box selection. "torchvision": boxes under 1e-2 px are dropped before NMS. "detectron2":
# none are; NMS per 0-based class id; boxes in original pixels are clipped to the image, empty ones dropped.
_C.MODEL.ROI_HEADS.POSTPROCESS = "torchvision"

_C.MODEL.ROI_BOX_HEAD = CN()
# "Res5ROIHead" (C4: the whole res5 stage + global average pool, Appendix A) or "FastRCNNConvFCHead"
# (FPN: two fully connected layers of FC_DIM).
_C.MODEL.ROI_BOX_HEAD.NAME = "Res5ROIHead"
# "ROIAlign", "ROIAlignV2" (RoIAlign with aligned=True: sample positions shifted by half a pixel,
# detectron2's default in every R-CNN config) or "ROIPool" (the paper's Faster R-CNN used RoI pooling).
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlign"
# FPN level of a box of area A: "torchvision" floor(4 + log2(sqrt(A) / 224) + 1e-6), scales inferred
# from the map sizes; "detectron2" floor(4 + log2(sqrt(A) / 224 + 1e-8)), scales 1 / backbone stride.
_C.MODEL.ROI_BOX_HEAD.POOLER_LEVEL_MAPPING = "torchvision"
# Pooled size: 14 for C4 (res5's stride 2 makes it 7), 7 for FPN.
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
# RoIAlign sampling points per bin; 0 = adaptive (torchvision's default is 2, detectron2's 0).
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
# How RoIAlign runs. "gather": on CPU, one weighted gather of channel vectors (embedding_bag), equal to
# torchvision's MultiScaleRoIAlign within float rounding and several times faster forward and backward;
# torchvision's kernel on GPU, under autocast and in exports. "torchvision": torchvision's
# MultiScaleRoIAlign everywhere. Was MODEL.FAST_ROI_ALIGN (True = "gather"; still accepted, with a
# warning). See resnet_det/modeling/detector/pooling.py.
_C.MODEL.ROI_BOX_HEAD.POOLER_IMPL = "gather"
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 2
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
# False: class-aware regression, 4 numbers per class (Appendix A / C); True: one box for all.
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
# Box-delta weights (wx, wy, ww, wh) of the second stage.
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = [10.0, 10.0, 5.0, 5.0]
# Box head regression loss, as MODEL.RPN's: "smooth_l1" | "giou" | "diou" | "ciou", smooth L1's beta
# (torchvision 1/9, detectron2's zoo 0.0 = L1) and the loss's weight. Divided by the number of sampled RoIs.
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 1.0 / 9
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0

# Localization (Appendix C): per-class regression heads on the classification net.
_C.MODEL.LOCALIZER = CN()
# Feature the per-class head reads ("res4" or "res5").
_C.MODEL.LOCALIZER.IN_FEATURE = "res5"
# Weight of the box loss against the classification loss.
_C.MODEL.LOCALIZER.BOX_LOSS_WEIGHT = 1.0
# Channels of the per-class head's 3x3 conv (0 = those of IN_FEATURE). Its anchors come from
# MODEL.ANCHOR_GENERATOR (one list), its matching and sampling from MODEL.RPN.IOU_THRESHOLDS,
# BATCH_SIZE_PER_IMAGE and POSITIVE_FRACTION (Appendix C samples 8 anchors per image, 1:1).
_C.MODEL.LOCALIZER.HEAD_CHANNELS = 0

# Classification (ImageNet / CIFAR pretraining).
_C.MODEL.CLASSIFIER = CN()
# "imagenet" (Table 1 nets) or "cifar" (Sec. 4.2, depth 6n+2).
_C.MODEL.CLASSIFIER.STYLE = "imagenet"
_C.MODEL.CLASSIFIER.NUM_CLASSES = 1000
# Depth 6n+2 of the "cifar" style nets (20, 32, 44, 56, 110, 1202 in Sec. 4.2); MODEL.RESNETS.DEPTH
# (Table 1 depths only) sizes the "imagenet" style.
_C.MODEL.CLASSIFIER.CIFAR_DEPTH = 20

# ---------------------------------------------------------------------------------------------
# INPUT
# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
# Shorter side at training: one is picked at random per image (multi-scale when several).
_C.INPUT.MIN_SIZE_TRAIN = (600,)
# How the training short side is drawn (detectron2's key): "choice" one of MIN_SIZE_TRAIN, "range" any
# integer in [MIN_SIZE_TRAIN[0], MIN_SIZE_TRAIN[1]] (two values), each equally likely.
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1000
_C.INPUT.MIN_SIZE_TEST = 600
_C.INPUT.MAX_SIZE_TEST = 1000
# Resized image size: "floor" of size x scale (torchvision's interpolate) or "round" (int(x + 0.5),
# detectron2's ResizeShortestEdge).
_C.INPUT.RESIZE_ROUNDING = "floor"
# Channel order the model sees: "BGR" (detectron2, MSRA weights) or "RGB" (torchvision weights).
_C.INPUT.FORMAT = "BGR"
# Probability of a horizontal flip at training (the RandomFlip augmentation).
_C.INPUT.RANDOM_FLIP_PROB = 0.5
# Detection training augmentations, applied in this order (resnet_det/data/augment.py, torchvision
# transforms.v2, boxes follow the pixels): "RandomFlip" (RANDOM_FLIP_PROB), "RandomCrop" (INPUT.CROP),
# "LargeScaleJitter" (INPUT.LSJ), "RandomIoUCrop" (SSD's crop, INPUT.IOU_CROP), "PhotometricDistort"
# (INPUT.PHOTOMETRIC). Each name at most once; e.g. ("RandomCrop", "RandomFlip", "PhotometricDistort").
_C.INPUT.AUGMENTATIONS = ("RandomFlip",)
# detectron2's random crop, before the model's resize. ENABLED True also turns it on when AUGMENTATIONS
# does not list "RandomCrop" (then it runs first, as in detectron2). TYPE: "relative" (SIZE = fractions
# (h, w) of the image), "relative_range" (fractions drawn in [SIZE, 1]), "absolute" (SIZE = pixels (h, w),
# at most the image), "absolute_range" (each side drawn in [SIZE[0], SIZE[1]] pixels, at most the image).
_C.INPUT.CROP = CN()
_C.INPUT.CROP.ENABLED = False
_C.INPUT.CROP.TYPE = "relative_range"
_C.INPUT.CROP.SIZE = (0.9, 0.9)
# Large-scale jitter (Ghiasi et al. 2021; detectron2's new baselines): resize so the image fits
# IMAGE_SIZE x IMAGE_SIZE times a factor drawn in SCALE_RANGE, then crop / pad (value 128) to exactly
# IMAGE_SIZE x IMAGE_SIZE. With it on, the model does not resize training images (MIN/MAX_SIZE_TRAIN
# unused); test images are resized by MIN/MAX_SIZE_TEST as always.
_C.INPUT.LSJ = CN()
_C.INPUT.LSJ.IMAGE_SIZE = 1024
_C.INPUT.LSJ.SCALE_RANGE = (0.1, 2.0)
# SSD's random IoU crop (torchvision's RandomIoUCrop): crop sides >= MIN_SCALE of the image, a crop
# kept when some box has IoU >= one of SAMPLER_OPTIONS (drawn per image; >= 1 = no crop).
_C.INPUT.IOU_CROP = CN()
_C.INPUT.IOU_CROP.MIN_SCALE = 0.3
_C.INPUT.IOU_CROP.SAMPLER_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
# Photometric distortion (torchvision's RandomPhotometricDistort, SSD): factor ranges (low, high) for
# brightness, contrast, saturation and a hue shift in [-0.5, 0.5]; each applied with probability PROB.
_C.INPUT.PHOTOMETRIC = CN()
_C.INPUT.PHOTOMETRIC.BRIGHTNESS = (0.875, 1.125)
_C.INPUT.PHOTOMETRIC.CONTRAST = (0.5, 1.5)
_C.INPUT.PHOTOMETRIC.SATURATION = tuple([0.5, 1.5])  # not the CONTRAST object: a shared one dumps as a YAML alias
_C.INPUT.PHOTOMETRIC.HUE = (-0.05, 0.05)
_C.INPUT.PHOTOMETRIC.PROB = 0.5
# Classification crops: training crop size and the shorter-side range of scale augmentation
# (Sec. 3.4: [256, 480] and 224), the test resize before the center crop.
_C.INPUT.CROP_SIZE = 224
_C.INPUT.SCALE_RANGE = (256, 480)
_C.INPUT.TEST_RESIZE = 256
# Sec. 3.4's "standard color augmentation" (Krizhevsky et al. PCA lighting noise) std.
_C.INPUT.PCA_LIGHTING_STD = 0.1
# Mean subtraction for classification: "per_channel" or "per_pixel" (the paper's, from a mean image).
_C.INPUT.MEAN_MODE = "per_channel"
# CIFAR: pad each side by this many pixels before the random crop (Sec. 4.2).
_C.INPUT.PAD = 4

# ---------------------------------------------------------------------------------------------
# DATASETS / DATALOADER
# ---------------------------------------------------------------------------------------------
_C.DATASETS = CN()
# Registered data set names (see resnet_det.data.catalog); list several to concatenate.
_C.DATASETS.TRAIN = ()
_C.DATASETS.TEST = ()

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 2
# Batch images of similar aspect ratio together (less padding).
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
# Drop training images without annotations.
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
# What to do with a missing, truncated or undecodable image: "error" stops with the file name,
# "skip" logs it to OUTPUT_DIR/skipped_images.txt, counts it in metrics and moves on.
_C.DATALOADER.ON_BAD_IMAGE = "error"
# Pin the training batches' host memory when the model trains on a GPU (MODEL.DEVICE cuda, or auto
# with one present): the model's non_blocking copies then overlap with the host; ignored on CPU.
_C.DATALOADER.PIN_MEMORY = True
# Training sampler (detection and localization loaders): "TrainingSampler" (each image once per
# epoch, reshuffled) or "RepeatFactorTrainingSampler" (detectron2's, from the LVIS paper: an image is
# repeated r = max over its categories c of max(1, sqrt(REPEAT_THRESHOLD / f(c))) times per epoch,
# f(c) = the fraction of training images containing c, the fraction of r rounded stochastically per
# epoch), which oversamples images of rare categories in long-tailed data sets.
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
# RepeatFactorTrainingSampler's threshold t: categories in fewer than this fraction of the images are
# oversampled (LVIS uses 0.001).
_C.DATALOADER.REPEAT_THRESHOLD = 0.0

# ---------------------------------------------------------------------------------------------
# SOLVER
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# Images per batch over all processes.
_C.SOLVER.IMS_PER_BATCH = 16
# The batch size the LR and schedule below were tuned for; 0 = IMS_PER_BATCH (no scaling). When
# they differ, BASE_LR scales by IMS_PER_BATCH / REFERENCE_BATCH and iterations inversely.
_C.SOLVER.REFERENCE_BATCH = 0
_C.SOLVER.BASE_LR = 0.02
# "SGD" (the paper's, Sec. 3.4) or "AdamW" (decoupled weight decay; learns faster from scratch in
# short schedules, e.g. the CPU demo: BASE_LR ~1e-3 and WEIGHT_DECAY ~0.05 rather than SGD's values).
_C.SOLVER.OPTIMIZER = "SGD"
# AdamW's (beta1, beta2); SGD uses MOMENTUM instead.
_C.SOLVER.BETAS = (0.9, 0.999)
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 1e-4
# Weight decay on norm parameters and biases (None = WEIGHT_DECAY).
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.WEIGHT_DECAY_BIAS = None
_C.SOLVER.MAX_ITER = 90000
# "WarmupMultiStepLR" (step schedule) or "WarmupCosineLR".
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
_C.SOLVER.STEPS = (60000, 80000)
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.WARMUP_FACTOR = 0.001
_C.SOLVER.WARMUP_ITERS = 1000
# "linear" or "constant" (ResNet-110's lr 0.01 warm-up, Sec. 4.2, is constant with factor 0.1).
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Keep only the newest this many periodic checkpoints (model_NNNNNNN.pth; 0 = keep all). An older one
# is deleted only after the new one is completely written; model_final.pth and model_best.pth are
# never deleted.
_C.SOLVER.CHECKPOINT_MAX_TO_KEEP = 0
# Clip gradients to this global L2 norm (0 = off).
_C.SOLVER.CLIP_GRADIENTS = 0.0
# Non-finite loss or gradient: "stop" with a report (iteration, loss term, image ids), or "skip"
# the step and count it in metrics.
_C.SOLVER.ON_NONFINITE = "stop"
_C.SOLVER.AMP = CN()
# Mixed precision (GPU); DTYPE "bfloat16" or "float16" (the latter uses a GradScaler).
_C.SOLVER.AMP.ENABLED = False
_C.SOLVER.AMP.DTYPE = "bfloat16"

# ---------------------------------------------------------------------------------------------
# MODEL_EMA: an exponential moving average of the weights (parameters and buffers), updated after
# every step (torch.optim.swa_utils.AveragedModel); evaluation during and after training, the
# drawings and --eval-only of a checkpoint that holds one use it; checkpoints hold both ("model" and
# "ema") and --resume restores both.
# ---------------------------------------------------------------------------------------------
_C.MODEL_EMA = CN()
_C.MODEL_EMA.ENABLED = False
# ema = DECAY * ema + (1 - DECAY) * weights after each step (0.999: about the last 1000 steps).
_C.MODEL_EMA.DECAY = 0.999
# Warm-up (d2go's ModelEMA): update n uses min(DECAY, (1 + n) / (DECAY_WARM_UP_FACTOR + n)), so a short
# run's average is not dominated by the random initial weights; negative = off (constant DECAY).
_C.MODEL_EMA.DECAY_WARM_UP_FACTOR = -1.0

# ---------------------------------------------------------------------------------------------
# TEST
# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
# Evaluate every this many iterations (0 = only at the end).
_C.TEST.EVAL_PERIOD = 0
# Metric whose best value keeps OUTPUT_DIR/model_best.pth, e.g. "bbox/AP" or "top1_acc".
_C.TEST.BEST_METRIC = "bbox/AP"
# Classification protocols: "center" crop, "10crop" (Tables 2-3), "multiscale" (Table 4).
_C.TEST.CLS_PROTOCOL = "center"
_C.TEST.MULTISCALE_SIZES = (224, 256, 384, 480, 640)
# Which COCOeval computes COCO box AP: "pycocotools" (the official one), "faster_coco_eval" (the C++
# faster-coco-eval package, pip install -e .[fast-eval]: the same 12 stats within 1e-4, several times
# faster at COCO-val scale, benchmarks/RESULTS.md) or "auto" (faster_coco_eval when installed). Logged.
_C.TEST.COCO_EVAL_IMPL = "auto"
# Images per inference call in each process when evaluating a detector (the data set is split
# across processes, each image evaluated once). Batches pad their images to a common size, so on a
# set of mixed sizes the detections can differ slightly from one-at-a-time; 1 keeps them exact. On
# 2 heavily loaded CPU cores 4 gave 1.4x (R50-FPN) and 1.4-2.7x (demo model) the images/s of 1
# (benchmarks/RESULTS.md, "Batched inference": not confirmed on an idle machine).
_C.TEST.IMS_PER_BATCH = 1
# Detection test-time augmentation (detectron2's keys; --eval-only and DefaultPredictor): the image is
# run at every shorter side of MIN_SIZES (longer side capped at MAX_SIZE) and, with FLIP, mirrored too;
# all boxes are merged per class with torchvision.ops.batched_nms at MODEL.ROI_HEADS.NMS_THRESH_TEST
# (modeling/detector/tta.py). Cost: len(MIN_SIZES) x (2 with FLIP) forward passes per image.
_C.TEST.AUG = CN()
_C.TEST.AUG.ENABLED = False
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_C.TEST.AUG.MAX_SIZE = 4000
_C.TEST.AUG.FLIP = True
# Inference precision of the detector (predictor, --eval-only, tools/visualize.py; modeling/precision.py):
# "fp32"; "bf16" (backbone, RPN head, box head in bf16 on CPUs with AVX512_BF16/AMX, else fp32 with one
# log line; autocast on CUDA); "int8" (CPU: post-training static quantization of the same parts,
# calibrated on PRECISION_CALIB_IMAGES images of DATASETS.TRAIN, or MODEL.WEIGHTS a calibrated
# checkpoint from tools/quantize.py). RoIAlign, NMS, box decoding and the box predictor stay float32.
# Export needs "fp32".
_C.TEST.PRECISION = "fp32"
# INT8 calibration: how many DATASETS.TRAIN images (evenly spaced, test-time mapper) to observe.
_C.TEST.PRECISION_CALIB_IMAGES = 32

# Visualization: images drawn at the end of training (0 = none) and the score threshold.
_C.VIS = CN()
_C.VIS.NUM_IMAGES = 4
_C.VIS.SCORE_THRESH = 0.5

_C.OUTPUT_DIR = "./output"
# Seed for python, numpy and torch; negative = a random seed (logged).
_C.SEED = 0
# Logging period in iterations.
_C.LOG_PERIOD = 20
# cudnn.benchmark: search the fastest conv algorithm per input shape (GPU). Off by default because
# multi-scale detection training sees many shapes, each costing a search.
_C.CUDNN_BENCHMARK = False
