"""Benchmark: click -> segment updated in MRML, on the real MRI (Colin27), with a warm embedding cache.

    .venv/bin/python SonoSAMSegment/Testing/Python/bench_logic.py [--clicks 50] [--model litemedsam]

Runs headless on slicer-core (the same logic runs inside Slicer). Each "click" is one prompt (a box for
box-only models, a point otherwise) on the same axial slice, written with mode="replace". Prints the
median time per click, its parts (preparing MRML -> numpy, the model's decoder, writing the segment) and
the share of the time spent outside the model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
for folder in (ROOT / "Testing" / "slicer", ROOT / "SonoSAMSegment", ROOT):
    sys.path.insert(0, str(folder))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from mrml_scene import make_scene, read_volume_file
    from SonoSAMSegmentLib.logic import SegmentLogic

    from sonosam.data import mri_colin27_paths

    t1, _ = mri_colin27_paths()
    ctx = make_scene()
    volume = read_volume_file(ctx.scene, t1, "ch2")
    segmentation = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("bench", "bench")
    other = segmentation.GetSegmentation().AddEmptySegment("other", "other")  # a realistic 2-segment node

    logic = SegmentLogic(args.model, device="cpu")
    t0 = time.perf_counter()
    logic.predictor  # noqa: B018
    load_s = time.perf_counter() - t0
    boxes_only = "point" not in logic.prompt_kinds()
    info = logic.volume_info(volume)
    m = info.ijk_to_world
    k = 90

    def ras(i, j):
        return (m @ np.array([i, j, k, 1.0]))[:3]

    rng = np.random.default_rng(0)
    # the first click encodes the slice (cold); then the cache is warm
    t0 = time.perf_counter()
    logic.segment(volume, segmentation, other, box_ras=[ras(60, 70), ras(120, 150)], sliceAxis="axial")
    cold_s = time.perf_counter() - t0
    totals, models, prepares, writes = [], [], [], []
    for _ in range(args.clicks):
        ci, cj = 90 + rng.integers(-15, 16), 108 + rng.integers(-20, 21)
        half_w, half_h = rng.integers(12, 40), rng.integers(12, 50)
        if boxes_only:
            kwargs = dict(box_ras=[ras(ci - half_w, cj - half_h), ras(ci + half_w, cj + half_h)])
        else:
            kwargs = dict(points_ras=[ras(ci, cj)], labels=[1])
        t0 = time.perf_counter()
        prediction = logic.segment(volume, segmentation, segment_id, sliceAxis="axial", **kwargs)
        totals.append(time.perf_counter() - t0)
        models.append(prediction.timings["model_s"])
        prepares.append(prediction.timings["prepare_s"])
        writes.append(prediction.timings["write_s"])
    encoder_calls = getattr(logic.predictor, "encoder_calls", None)

    med = statistics.median
    total, model = med(totals), med(models)
    outside = [(t - mo) / t for t, mo in zip(totals, models)]
    print(f"SonoSAMSegment logic benchmark: {args.model}, real MRI ch2.nii.gz {info.dims_ijk}, axial slice {k}, "
          f"CPU, {args.threads} threads, {args.clicks} clicks ({'boxes' if boxes_only else 'points'})")
    print(f"  model load            {load_s * 1000:8.1f} ms")
    print(f"  first click (encode)  {cold_s * 1000:8.1f} ms")
    print(f"  click -> MRML median  {total * 1000:8.1f} ms   (p90 {np.percentile(totals, 90) * 1000:.1f} ms)")
    print(f"    model (decoder)     {model * 1000:8.1f} ms")
    print(f"    prepare (MRML->np)  {med(prepares) * 1000:8.1f} ms")
    print(f"    write segment       {med(writes) * 1000:8.1f} ms")
    print(f"  outside the model     {med(outside) * 100:8.1f} %  (median of per-click shares; goal <= 20 %)")
    print(f"  encoder runs          {encoder_calls} (1 expected: the cache stayed warm)")
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
