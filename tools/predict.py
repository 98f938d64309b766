#!/usr/bin/env python
"""Run a detector on anything: image files, globs, folders (recursively), videos, a webcam.

    python tools/predict.py --config-file C --input photos/ clip.mp4 'more/**/*.jpg' --output vis/ \\
        [--output-json preds.json] [--confidence-threshold 0.5] [--batch-size 4] MODEL.WEIGHTS m.pth
    python tools/predict.py --config-file C --webcam [--max-frames 300] --output vis/ MODEL.WEIGHTS m.pth
    python tools/predict.py --config-file C --dataset shapes_val --show-gt [--side-by-side] --output vis/ \\
        [--num-images 20] MODEL.WEIGHTS m.pth

--output DIR: one drawn image per input image; a video becomes DIR/<name>.mp4 with its fps and size.
--output-json FILE: the predictions as COCO results ({image_id, category_id, bbox xywh, score}) and
FILE's sidecar <FILE>.images.json: {"images": [{id, file_name, height, width}], "categories": [...]}
(a video frame's file_name is "<video>#<frame index>"). Images are decoded by --num-workers
DataLoader workers while the model runs; a progress bar shows images/s and the time left. Files that
cannot be read are skipped, named and counted at the end; only when nothing can be read does the
run fail (exit status 2, like every user mistake). tools/visualize.py is this tool under another name.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resnet_det.engine.defaults import exit_on_user_error, setup_cfg_or_exit  # noqa: E402

logger = logging.getLogger("resnet_det.predict")


def parse_args(argv=None, prog=None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="yacs YAML config (configs/...)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", action="extend", metavar="PATH",
                     help="image files, folders (searched recursively), globs ('a/**/*.jpg'), video files")
    src.add_argument("--webcam", nargs="?", type=int, const=0, default=None, metavar="INDEX",
                     help="read camera INDEX (default 0) until Ctrl-C or --max-frames")
    src.add_argument("--dataset", metavar="NAME", help="a registered data set (resnet_det.data.DatasetCatalog)")
    p.add_argument("--output", metavar="DIR", help="folder for drawn images / videos")
    p.add_argument("--output-json", metavar="FILE", help="write the predictions as COCO results (and FILE's "
                   "sidecar .images.json naming each image id's file)")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="drop predictions scoring below this")
    p.add_argument("--batch-size", type=int, default=1, help="images per model forward")
    p.add_argument("--num-workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes decoding images ahead of the model (0: in this process)")
    p.add_argument("--max-frames", type=int, default=0, help="with --webcam: stop after N frames (0: Ctrl-C)")
    p.add_argument("--show-gt", action="store_true", help="overlay ground truth (needs --dataset)")
    p.add_argument("--side-by-side", action="store_true", help="ground truth in a second panel (needs --dataset)")
    p.add_argument("--num-images", type=int, default=0, help="with --dataset: draw only the first N (0: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. MODEL.WEIGHTS output/model_final.pth")
    args = p.parse_args(argv)
    if (args.show_gt or args.side_by_side) and not args.dataset:
        p.error("--show-gt/--side-by-side need ground truth: use --dataset NAME instead of --input")
    if not 0.0 <= args.confidence_threshold <= 1.0:
        p.error(f"--confidence-threshold={args.confidence_threshold}: expected a value in [0, 1]")
    if args.batch_size < 1:
        p.error(f"--batch-size={args.batch_size}: expected at least 1")
    if args.num_workers < 0:
        p.error(f"--num-workers={args.num_workers}: expected 0 or more")
    if not args.output and not args.output_json:
        p.error("nothing to write: give --output DIR (drawings) and/or --output-json FILE (predictions)")
    if args.dataset and (args.output_json or not args.output):
        p.error("--dataset draws images: give --output DIR (a data set's predictions as json: "
                "tools/train_net.py --eval-only writes "
                "OUTPUT_DIR/inference/<name>/inference/coco_instances_results.json)")
    return args


class PredictionSink:
    """Collects COCO result records and the image list, and writes them as --output-json and its sidecar."""

    def __init__(self, path, class_names, contiguous_to_dataset):
        from resnet_det.evaluation.coco_evaluation import instances_to_coco_results

        self.path, self.to_coco = path, instances_to_coco_results
        self.class_names, self.to_dataset = list(class_names), contiguous_to_dataset
        self.images, self.results = [], []

    def add(self, file_name: str, height: int, width: int, instances: dict) -> None:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)})
        self.results += self.to_coco(instances, image_id, self.to_dataset)

    def write(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(self.results, f)
        cats = [{"id": self.to_dataset[i], "name": n} for i, n in enumerate(self.class_names)]
        with open(sidecar_path(self.path), "w", encoding="utf-8") as f:
            json.dump({"images": self.images, "categories": cats}, f, indent=1)


def sidecar_path(json_path: str) -> str:
    return os.path.splitext(json_path)[0] + ".images.json"


def _category_map(cfg, num_classes: int) -> dict:
    """Contiguous class id -> the data set's category id (COCO's 1..90, ...); 1..K when no data set says."""
    from resnet_det.data import MetadataCatalog

    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        id_map = MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id", None)
        if id_map and len(id_map) == num_classes:
            return {int(v): int(k) for k, v in id_map.items()}
    return {i: i + 1 for i in range(num_classes)}


class Runner:
    def __init__(self, predictor, args, class_names, sink):
        import cv2

        from resnet_det.data.sources import SkipLog
        from resnet_det.utils.visualizer import draw_instances, unique_output_path

        self.cv2, self.draw, self.out_path = cv2, draw_instances, unique_output_path
        self.predictor, self.args, self.class_names, self.sink = predictor, args, class_names, sink
        self.skips, self.used, self.done, self.written = SkipLog(), set(), 0, []
        if args.output:
            os.makedirs(args.output, exist_ok=True)

    def _drawn(self, img, inst):
        return self.draw(img, inst["boxes"], inst["scores"], inst["pred_classes"], self.class_names,
                         self.args.confidence_threshold)

    def images(self, paths, bar) -> None:
        from resnet_det.data.sources import image_loader

        loader = image_loader(paths, self.args.batch_size, self.args.num_workers)
        for batch in loader:
            good = []
            for _, path, img, reason in batch:
                if img is None:
                    self.skips.add(path, reason)
                else:
                    good.append((path, img))
            outs = self.predictor.predict_batch([img for _, img in good])
            for (path, img), out in zip(good, outs):
                inst = out["instances"]
                if self.sink:
                    self.sink.add(path, img.shape[0], img.shape[1], inst)
                if self.args.output:
                    dst = self.out_path(self.args.output, path, self.used)
                    if not self.cv2.imwrite(dst, self._drawn(img, inst)):
                        raise OSError(f"could not write {dst!r} (is the output folder writable?)")
                    self.written.append(dst)
            self.done += len(good)
            bar.update(len(batch))

    def video(self, cap, name: str, bar) -> None:
        from resnet_det.data.sources import video_frames, video_properties

        fps, w, h, _ = video_properties(cap)
        writer = None
        if self.args.output:
            stem = os.path.splitext(os.path.basename(name))[0] or "webcam"
            dst = self.out_path(self.args.output, stem + ".mp4", self.used)
            dst = os.path.splitext(dst)[0] + ".mp4"
            writer = self.cv2.VideoWriter(dst, self.cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise OSError(f"could not open {dst!r} for writing an mp4v video (is the folder writable?)")
        index = 0
        try:
            for frames in video_frames(cap, self.args.batch_size):
                outs = self.predictor.predict_batch(frames)
                for frame, out in zip(frames, outs):
                    inst = out["instances"]
                    if self.sink:
                        self.sink.add(f"{name}#{index}", frame.shape[0], frame.shape[1], inst)
                    if writer is not None:
                        drawn = self._drawn(frame, inst)
                        if drawn.shape[:2] != (h, w):  # a stream that changes size mid-way
                            drawn = self.cv2.resize(drawn, (w, h))
                        writer.write(drawn)
                    index += 1
                self.done += len(frames)
                bar.update(len(frames))
                if self.args.max_frames and index >= self.args.max_frames:
                    break
        finally:
            cap.release()
            if writer is not None:
                writer.release()
                self.written.append(dst)


def main(argv=None, prog=None) -> list:
    args = parse_args(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from resnet_det.data.sources import expand_inputs, nothing_readable, open_video, open_webcam

    sources = expand_inputs(args.input) if args.input else []  # a typo fails before the model loads
    # Let the model drop low scores before NMS bookkeeping, as detectron2's demo does; an explicit
    # MODEL.ROI_HEADS.SCORE_THRESH_TEST among the user's overrides (merged after it) still wins.
    args.opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(args.confidence_threshold), *args.opts]
    cfg = setup_cfg_or_exit(args)  # checked like the training tools' (and the weights' convention adopted)

    from resnet_det.engine import DefaultPredictor

    predictor = DefaultPredictor(cfg)
    if args.dataset:
        return _draw_dataset(predictor, args)
    class_names = predictor.class_names
    sink = PredictionSink(args.output_json, class_names, _category_map(cfg, len(class_names))) \
        if args.output_json else None
    runner = Runner(predictor, args, class_names, sink)

    from tqdm import tqdm

    images = [s.path for s in sources if s.kind == "image"]
    videos = []
    for s in sources:
        if s.kind == "video":
            cap = open_video(s.path)
            if cap is None:
                runner.skips.add(s.path, "OpenCV cannot open or decode this video (corrupt, or an unknown codec)")
            else:
                videos.append((s.path, cap))
    from resnet_det.data.sources import video_properties

    total = len(images) + sum(max(video_properties(c)[3], 0) for _, c in videos)
    bar = tqdm(total=total or None, unit="img", desc="predict", disable=args.no_progress, dynamic_ncols=True)
    try:
        if images:
            runner.images(images, bar)
        for path, cap in videos:
            runner.video(cap, path, bar)
        if args.webcam is not None:
            try:
                runner.video(open_webcam(args.webcam), "webcam", bar)
            except KeyboardInterrupt:
                logger.info("stopped by Ctrl-C")
    finally:
        bar.close()
        for _, cap in videos:
            cap.release()
    if runner.done == 0:
        raise nothing_readable(runner.skips)
    if sink:
        sink.write()
        print(f"wrote {len(sink.results)} detections on {len(sink.images)} images to "
              f"{os.path.abspath(args.output_json)} (image ids: {sidecar_path(os.path.abspath(args.output_json))})")
    if args.output:
        print(f"wrote {len(runner.written)} drawn images/videos to {os.path.abspath(args.output)}")
    print(f"predicted {runner.done} images; {runner.skips.summary()}")
    return runner.written


def _draw_dataset(predictor, args) -> list:
    from resnet_det.data import DatasetCatalog, MetadataCatalog
    from resnet_det.utils.visualizer import visualize_images

    inputs = DatasetCatalog.get(args.dataset)
    inputs = inputs[: args.num_images] if args.num_images > 0 else inputs
    class_names = getattr(MetadataCatalog.get(args.dataset), "thing_classes", None)
    written = visualize_images(predictor, inputs, args.output, class_names=class_names,
                               score_thresh=args.confidence_threshold, show_gt=args.show_gt,
                               side_by_side_gt=args.side_by_side, progress=not args.no_progress)
    print(f"wrote {len(written)} images to {os.path.abspath(args.output)}")
    return written


if __name__ == "__main__":
    exit_on_user_error(main)  # user mistakes: one paragraph, exit status 2; bugs: a traceback
