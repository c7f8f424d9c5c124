"""Tracking benchmark on the real 120-frame A4C loop: frames/s with 1 and 2 objects, peak RSS, time shares.

    python -m bench.track            # prints a JSON dict; bench_track() returns it
"""

from __future__ import annotations

import json
import time

import numpy as np

from bench.models import peak_rss_mib


def bench_track(n_frames: int | None = None, model_every: int = 5, threshold: float = 0.85, objects=(1, 2),
                model_name: str = "litemedsam", device: str | None = None, backend: str | None = None) -> dict:
    """Track the LV (1 object) and LV + LA (2 objects) through the real loop from boxes on frame 0, with
    nobody answering interventions (they are counted). Each run starts with an empty embedding cache."""
    from sonosam.data import echo_a4c_path
    from sonosam.io import read_cine
    from sonosam.models import load_model
    from sonosam.predictor import Predictor
    from sonosam.track.synthetic import LA_BOX, LV_BOX
    from sonosam.track.tracker import Tracker

    cine = read_cine(echo_a4c_path())
    frames = cine.frames[:n_frames] if n_frames else cine.frames
    model = load_model(model_name, device=device, backend=backend)
    out = {"frames": int(frames.shape[0]), "frame_size": list(frames.shape[1:]), "model": model_name,
           "backend": model.backend,
           "model_every": model_every, "threshold": threshold}
    boxes = [("LV", LV_BOX), ("LA", LA_BOX)]
    for count in objects:
        predictor = Predictor(model)
        tracker = Tracker(predictor, frames, threshold=threshold, model_every=model_every, pause=False)
        start = time.perf_counter()
        for name, box in boxes[:count]:
            tracker.add_object(name, 0, box=box)
        tracker.run()
        elapsed = time.perf_counter() - start
        tracker.close()
        predictor.close()
        timing = tracker.timing
        conf = tracker.confidences()
        tracked = np.array([[tracker.result(t, n).source != "keyframe" for n in tracker.objects]
                            for t in range(tracker.n_frames)])
        out[f"{count}_object"] = {
            "seconds": round(elapsed, 2), "fps": round(frames.shape[0] / elapsed, 3),
            "encoder_calls": predictor.encoder_calls, "model_frames": len(tracker.model_frames),
            "interventions_requested": len(tracker.events),
            # what other thresholds would have asked for (object-frames at or below), and where confidence lies
            "requests_at_threshold": {str(th): int(((conf <= th) & tracked).sum()) for th in (0.5, 0.6, 0.7, 0.8, 0.85)},
            "confidence_percentiles_5_25_50": [round(float(v), 3) for v in np.percentile(conf[tracked], (5, 25, 50))],
            "share_motion": round(timing["motion_s"] / elapsed, 3),
            "share_model": round((timing["encode_s"] + timing["decode_s"]) / elapsed, 3),
            "share_encode_wait": round(timing["encode_s"] / elapsed, 3),
            "timing_s": {k: round(v, 2) for k, v in timing.items()},
            "peak_rss_mib": round(peak_rss_mib(), 1)}
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int)
    parser.add_argument("--model-every", type=int, default=5)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    print(json.dumps(bench_track(args.frames, args.model_every, objects=tuple(args.objects)), indent=1))
