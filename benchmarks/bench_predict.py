#!/usr/bin/env python
"""Images per second of tools/predict.py over a folder of images, for several --batch-size values.

    python benchmarks/bench_predict.py [--weights output/demo/model_final.pth] [--num-images 200] \\
        [--batch-sizes 1 4] [--num-workers 2] [--config-file configs/demo/frcnn_r18_fpn_shapes.yaml]

The folder is the first --num-images images of the shapes set (datasets/shapes, generated on first
use; the val images, then train). The model is built once; each batch size then runs the tool's own
loop (DataLoader decoding in --num-workers processes, predict_batch, drawing, writing the drawings
and the COCO json) over the whole folder after one warm-up batch, and the wall time gives images/s.
"""
import argparse
import os
import runpy
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(ROOT, "configs", "demo", "frcnn_r18_fpn_shapes.yaml"))
    p.add_argument("--weights", default="", help="MODEL.WEIGHTS (empty: the config's architecture, random init)")
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--num-workers", type=int, default=2)
    args = p.parse_args()

    from resnet_det.data import DatasetCatalog

    dicts = DatasetCatalog.get("shapes_val") + DatasetCatalog.get("shapes_train")
    work = tempfile.mkdtemp(prefix="bench_predict_")
    folder = os.path.join(work, "images")
    os.makedirs(folder)
    for i, d in enumerate(dicts[: args.num_images]):  # val and train images share file names
        shutil.copy(d["file_name"], os.path.join(folder, f"{i:04d}_{os.path.basename(d['file_name'])}"))
    tool = runpy.run_path(os.path.join(ROOT, "tools", "predict.py"))
    from resnet_det.data.sources import expand_inputs
    from resnet_det.engine import DefaultPredictor

    paths = [s.path for s in expand_inputs([folder])]
    results = []
    predictor = None
    for bs in args.batch_sizes:
        targs = tool["parse_args"](["--config-file", args.config_file, "--input", folder, "--output",
                                    os.path.join(work, f"vis{bs}"), "--output-json", os.path.join(work, f"p{bs}.json"),
                                    "--batch-size", str(bs), "--num-workers", str(args.num_workers),
                                    "--no-progress", "MODEL.WEIGHTS", args.weights, "MODEL.DEVICE", "cpu"])
        targs.opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(targs.confidence_threshold), *targs.opts]
        if predictor is None:
            predictor = DefaultPredictor(tool["setup_cfg_or_exit"](targs))
        runner = tool["Runner"](predictor, targs, predictor.class_names, None)
        from tqdm import tqdm

        with tqdm(disable=True) as bar:
            runner.images(paths[:bs], bar)  # warm-up: first forward, worker start
            runner.done = 0
            start = time.perf_counter()
            runner.images(paths, bar)
            elapsed = time.perf_counter() - start
        results.append((bs, runner.done, elapsed))
        print(f"batch {bs}: {runner.done} images in {elapsed:.1f} s = {runner.done / elapsed:.2f} images/s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
