"""`make demo`: the main job on real data with the embedded default model, no network needed.

Reads the real adult apical 4-chamber echo loop shipped in `pydicom-data`, segments the left ventricle
on frame 0 from a box, then tracks it through all 120 frames, and writes to the output folder: the
frame-0 mask and overlay, the segmentation sequence (.seq.nrrd, opens in Slicer), an overlay GIF and
PNG strip, the confidence per frame, the frames where the tracker asks for a human look, and timings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .io import Cine
    from .predictor import Predictor

LV_BOX = (300, 70, 440, 270)  # left ventricle in frame 0 (the chamber at the upper right of the sector)


def segment_first_frame(out: Path, backend: str) -> tuple[dict, "Predictor", "Cine"]:
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
    model = load_model("litemedsam", backend=backend)
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
    save_overlay_png(out / "lv_frame0_overlay.png", cine.frames[0], [mask], box=LV_BOX, overwrite=True)
    print(f"left ventricle, frame 0: {int(mask.sum())} px = {area_mm2 / 100:.1f} cm^2, "
          f"predicted IoU {prediction.score:.3f}")
    print(f"model {model.spec.name} on {model.device}: load {timings['model_load_s']:.1f} s, "
          f"encode {timings['encode_s']:.2f} s, decode {timings['decode_ms']:.0f} ms")
    summary = {"frame0": {"pixels": int(mask.sum()), "area_cm2": area_mm2 / 100, "predicted_iou": prediction.score,
                          "box": LV_BOX}, "timings": timings, "model": model.spec.name, "device": str(model.device),
               "backend": model.backend}
    return summary, predictor, cine


def track_loop(out: Path, predictor, cine) -> dict:
    """Track the left ventricle from the frame-0 box through the whole loop; nobody answers interventions
    here, so the frames that ask for one are listed (interventions.csv) and tracking goes on."""
    from .track import Tracker
    from .track.outputs import write_tracking_outputs

    tracker = Tracker(predictor, cine.frames, pause=False)
    start = time.perf_counter()
    tracker.add_object("LV", 0, box=LV_BOX)
    tracker.run(on_progress=lambda done, total: print(f"\rtracking {done}/{total} frames", end="", flush=True))
    seconds = time.perf_counter() - start
    print()
    tracker.close()
    summary = write_tracking_outputs(out / "track", tracker, cine.frames, cine.spacing_mm, cine.frame_time_ms,
                                     seconds, overwrite=True, extra={"cine": cine.source.name})
    areas = tracker.masks("LV").reshape(tracker.n_frames, -1).sum(axis=1) * cine.spacing_mm[0] * cine.spacing_mm[1]
    summary["lv_area_cm2"] = {"min": round(float(areas.min()) / 100, 2), "max": round(float(areas.max()) / 100, 2)}
    print(f"tracked the LV through {summary['frames']} frames in {seconds:.1f} s ({summary['frames_per_second']} "
          f"frames/s; model on {summary['model_frames']} frames); LV area {summary['lv_area_cm2']['min']}-"
          f"{summary['lv_area_cm2']['max']} cm^2; {summary['interventions_requested']} intervention request(s)")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--backend", default="auto", help="inference engine (see sonosam.models.backends)")
    parser.add_argument("--no-track", action="store_true", help="only segment frame 0")
    args = parser.parse_args(argv)
    (args.out / "track").mkdir(parents=True, exist_ok=True)
    summary, predictor, cine = segment_first_frame(args.out, args.backend)
    if not args.no_track:
        summary["track"] = track_loop(args.out, predictor, cine)
    predictor.close()
    from .io import write_text

    write_text(args.out / "summary.json", json.dumps(summary, indent=2), overwrite=True)  # the demo reruns in place
    print(f"wrote {args.out}/: lv_frame0.seg.nrrd, lv_frame0_overlay.png, track/ (segmentation.seq.nrrd, "
          "overlay.gif, strip.png, confidence.csv, interventions.csv), summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
