"""`make demo`: the main job on real data with the embedded default model, no network needed.

Reads the real adult apical 4-chamber echo loop shipped in `pydicom-data`, segments the left ventricle
on frame 0 from a box, and writes the mask, an overlay and the timings to the output folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LV_BOX = (300, 70, 440, 270)  # left ventricle in frame 0 (the chamber at the upper right of the sector)


def segment_first_frame(out: Path) -> dict:
    from .data import echo_a4c_path
    from .io import read_cine, save_overlay_png, write_segmentation
    from .models import load_model
    from .predictor import Predictor

    timings = {}
    start = time.perf_counter()
    cine = read_cine(echo_a4c_path())
    timings["read_cine_s"] = time.perf_counter() - start
    print(f"echo loop: {cine.n_frames} frames of {cine.frames.shape[2]}x{cine.frames.shape[1]} px, "
          f"{cine.spacing_mm[0]:.3f} mm/px, {cine.fps or 0:.0f} fps ({cine.source.name})")

    start = time.perf_counter()
    model = load_model("litemedsam")
    predictor = Predictor(model)
    timings["model_load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    predictor.embedding(cine.frames[0], key=("a4c", 0))
    timings["encode_s"] = time.perf_counter() - start
    start = time.perf_counter()
    prediction = predictor.predict(cine.frames[0], box=LV_BOX, key=("a4c", 0))
    timings["decode_ms"] = 1000 * (time.perf_counter() - start)

    mask = prediction.mask
    area_mm2 = float(mask.sum() * cine.spacing_mm[0] * cine.spacing_mm[1])
    write_segmentation(out / "lv_frame0.seg.nrrd", mask[None], cine.frame_geometry(),
                       [{"name": "LV", "color": (0.85, 0.3, 0.3)}], overwrite=True)
    save_overlay_png(out / "lv_frame0_overlay.png", cine.frames[0], [mask], box=LV_BOX)
    print(f"left ventricle, frame 0: {int(mask.sum())} px = {area_mm2 / 100:.1f} cm^2, "
          f"predicted IoU {prediction.score:.3f}")
    print(f"model {model.spec.name} on {model.device}: load {timings['model_load_s']:.1f} s, "
          f"encode {timings['encode_s']:.2f} s, decode {timings['decode_ms']:.0f} ms")
    return {"frame0": {"pixels": int(mask.sum()), "area_cm2": area_mm2 / 100, "predicted_iou": prediction.score,
                       "box": LV_BOX}, "timings": timings, "model": model.spec.name, "device": str(model.device)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = segment_first_frame(args.out)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/: lv_frame0.seg.nrrd, lv_frame0_overlay.png, summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
