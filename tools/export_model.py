#!/usr/bin/env python
"""Export a detector (Faster R-CNN C4/FPN) or a classification ResNet to TorchScript or ONNX.

    python tools/export_model.py --config-file configs/Base-RCNN-FPN.yaml --format onnx \
        --output out/export [--sample-image img.jpg] MODEL.WEIGHTS model_final.pth

Writes OUTPUT/model.ts or OUTPUT/model.onnx and OUTPUT/<file>.json (input convention, size rules,
class names, verification). The exported file is run back on the sample image (or a generated
scene) and a second image of another shape, and compared with eager PyTorch; exit status 1 when
they differ beyond tolerance. `--verify ARTIFACT` only re-checks an existing export against the
config and weights.

TEST.PRECISION int8 with --format onnx also writes OUTPUT/model_int8.onnx: model.onnx quantized by
ONNX Runtime's quantize_static (QDQ, per-channel), calibrated on the TEST.PRECISION_CALIB_IMAGES
images of DATASETS.TRAIN that the PyTorch INT8 model calibrates on (resnet_det/export/quantize.py).

Classifiers (configs/imagenet, configs/cifar10) are built as pretraining builds them; MODEL.WEIGHTS
must fill the net exactly, and a per-pixel mean image recorded in it is baked into the graph:

    python tools/export_model.py --config-file configs/cifar10/resnet-20.yaml --format onnx \
        --output out/cifar MODEL.WEIGHTS output/cifar10_resnet-20/model_final.pth
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_det.engine.defaults import USER_ERROR_EXIT, report_user_error, setup_cfg_or_exit  # noqa: E402
from resnet_det.export import (DEFAULT_OPSET, FORMATS, ExportedModel, ExportMismatchError,  # noqa: E402
                               Tolerance, build_eager_model, export_model, format_report,
                               make_export_module, verification_images, verify_exported)
from resnet_det.export.quantize import export_int8_onnx  # noqa: E402
from resnet_det.utils.errors import UserInputError  # noqa: E402
from resnet_det.utils.visualizer import read_image  # noqa: E402

MISMATCH_EXIT = 1  # outputs differ from eager PyTorch; USER_ERROR_EXIT (2): bad config, weights, image, option


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--format", choices=sorted(FORMATS), help="required unless --verify is given")
    p.add_argument("--output", metavar="DIR", help="folder for the exported file and its metadata")
    p.add_argument("--sample-image", metavar="IMG", help="image to trace and compare on (default: generated)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 11)")
    p.add_argument("--verify", metavar="ARTIFACT",
                   help="do not export; compare an existing model.ts/model.onnx with this config's model")
    t = Tolerance()
    p.add_argument("--box-atol", type=float, default=t.box_atol, help="pixels")
    p.add_argument("--score-atol", type=float, default=t.score_atol)
    p.add_argument("--logit-atol", type=float, default=t.logit_atol)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.WEIGHTS model_final.pth")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.verify is None and (args.format is None or args.output is None):
        parser().error("--format and --output are required to export (or give --verify ARTIFACT)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except UserInputError as e:  # config, weights, image, option mistakes; anything else is a bug
        report_user_error(e)
        return USER_ERROR_EXIT


def run(args) -> int:
    cfg = setup_cfg_or_exit(args).clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"  # artifacts are traced on CPU; ONNX files then run on any provider
    cfg.freeze()
    tol = Tolerance(box_atol=args.box_atol, score_atol=args.score_atol, logit_atol=args.logit_atol)
    sample = read_image(args.sample_image) if args.sample_image else None
    if args.verify:
        exported = ExportedModel(args.verify)
        module = make_export_module(cfg, build_eager_model(cfg))
        report = verify_exported(cfg, module, exported, verification_images(cfg, sample), tol)
        print(f"{args.verify}: {format_report(report)}")
        if not report["passed"]:
            print(f"ERROR: {args.verify} does NOT reproduce eager PyTorch within {tol.as_dict()}",
                  file=sys.stderr)
            return MISMATCH_EXIT
        return 0
    try:
        if cfg.TEST.PRECISION == "int8" and args.format == "onnx":  # the fp32 model.onnx, then its QDQ twin
            path, meta = export_int8_onnx(cfg, args.output, sample, args.opset, tol)
        else:
            path, meta = export_model(cfg, args.format, args.output, sample, args.opset, tol)
    except ExportMismatchError as e:
        print(f"ERROR: export verification FAILED; do not deploy this file.\n{e}", file=sys.stderr)
        return MISMATCH_EXIT
    print(f"wrote {path} and {path}.json\n{format_report(meta['verification'])}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
