"""Benchmark and accuracy table for slice propagation on the real Colin27 T1 MRI with its AAL labels.

    python -m bench.volume [--labels 73 77 71 37] [--json out.json]

For each structure: one seed box on the slice where the label is largest (the label's bounding box
there), propagation both ways, and the naive baseline (every slice of the volume prompted independently
with that same box), scored by 3D Dice against the label; plus where propagation stopped against the
label's true first/last slice. The stop rules were tuned on DEV_LABELS and checked on HELDOUT_LABELS;
TWO_SEEDS adds rows with a second seed box where one seed's front stops short. Speed: slices per second
for propagation with a cold cache (fresh predictor: encoder in the loop, prefetch ahead of the front) and
a warm one (embeddings cached), and for the naive baseline cold and warm, in the same run; and the
embedding cache's memory for the whole volume.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sonosam.evaluate.metrics import dice
from sonosam.volume import Seed, naive_baseline, propagate, volume_window

DEV_LABELS = (77, 73, 71, 37)  # Thalamus_L, Putamen_L, Caudate_L, Hippocampus_L: the stop rules were tuned on these
# Thalamus_R, Putamen_R, Caudate_R, Hippocampus_R, Pallidum_L/R, Amygdala_L/R, Insula_L: only checked
HELDOUT_LABELS = (78, 74, 72, 38, 75, 76, 41, 42, 29)
DEFAULT_LABELS = DEV_LABELS + HELDOUT_LABELS
TWO_SEEDS = {71: 75, 72: 75}  # caudate: a second box on the head (slice 75), where one seed's front stops short


def label_seed(labels: np.ndarray, label: int, axis: int = 0) -> tuple[int, tuple[int, int, int, int]]:
    """The slice where `label` is largest along `axis`, and the label's bounding box there (x0, y0, x1, y1)."""
    mask = labels == label
    if not mask.any():
        raise ValueError(f"Label {label} is not in the label map.")
    other = tuple(a for a in range(3) if a != axis)
    index = int(np.argmax(mask.sum(axis=other)))
    return index, label_box(labels, label, index, axis)


def true_extent(mask: np.ndarray, axis: int = 0) -> tuple[int, int]:
    other = tuple(a for a in range(3) if a != axis)
    filled = np.nonzero(mask.any(axis=other))[0]
    return int(filled[0]), int(filled[-1])


def label_box(labels: np.ndarray, label: int, index: int, axis: int = 0) -> tuple[int, int, int, int]:
    """The label's bounding box (x0, y0, x1, y1) on slice `index` along `axis`."""
    rows, cols = np.nonzero(np.take(labels == label, index, axis=axis))
    if rows.size == 0:
        raise ValueError(f"Label {label} is not on slice {index}.")
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def evaluate_structure(predictor, volume, labels, label, axis=0, window=None, volume_id=None,
                       extra_seeds: tuple[int, ...] = (), **options) -> dict:
    """Propagate from one seed box (plus boxes on `extra_seeds` slices) and compare with the naive baseline
    (the first box on every slice); all numbers for one structure."""
    gt = labels == label
    index, box = label_seed(labels, label, axis)
    seeds = [Seed(index, box=box)] + [Seed(i, box=label_box(labels, label, i, axis)) for i in extra_seeds]
    window = window or volume_window(volume)
    started = time.perf_counter()
    result = propagate(predictor, volume, seeds, axis=axis, window=window, volume_id=volume_id, **options)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    naive = naive_baseline(predictor, volume, box, axis=axis, window=window, volume_id=volume_id)
    naive_seconds = time.perf_counter() - started
    first, last = true_extent(gt, axis)
    oracle = np.zeros_like(naive)
    where = [slice(None)] * 3
    where[axis] = slice(first, last + 1)
    oracle[tuple(where)] = naive[tuple(where)]
    extent = result.extent() or (index, index)
    return {"label": int(label), "seed_slice": index, "extra_seeds": list(extra_seeds), "box": list(box),
            "true_extent": [first, last],
            "extent": list(extent), "stop_error": [extent[0] - first, extent[1] - last],
            "dice": dice(result.mask, gt), "dice_naive": dice(naive, gt), "dice_naive_true_range": dice(oracle, gt),
            "seed_dice": dice(result.slice_mask(index), np.take(gt, index, axis=axis)),
            "slices_visited": len(result.slices), "seconds": seconds, "naive_seconds": naive_seconds,
            "encoder_calls": result.encoder_calls, "summary": result.summary()}


def bench_propagation(labels=DEFAULT_LABELS, axis: int = 0, model=None, verbose: bool = True) -> dict:
    """Run the accuracy table and the speed benchmark on Colin27; returns a dict (see module doc)."""
    import torch

    from sonosam.data import aal_label_names, mri_colin27_paths
    from sonosam.io import read_volume
    from sonosam.models import load_model
    from sonosam.predictor import Predictor

    say = print if verbose else (lambda *a, **k: None)
    t1, aal = mri_colin27_paths()
    volume, labelmap = read_volume(t1).array, read_volume(aal).array
    names = aal_label_names()
    model = model or load_model("litemedsam")
    window = volume_window(volume)
    n = volume.shape[axis]
    out = {"device": str(model.device), "threads": torch.get_num_threads(), "model": model.spec.name,
           "volume_shape": list(volume.shape), "axis": axis}

    # 1. cold: a fresh predictor, propagation of the first structure with the encoder in the loop
    cold = Predictor(model, cache_mib=4096)
    seed, box = label_seed(labelmap, labels[0], axis)
    started = time.perf_counter()
    result = propagate(cold, volume, [Seed(seed, box=box)], axis=axis, window=window, volume_id="colin27")
    seconds = time.perf_counter() - started
    out["propagation_cold"] = {"label": labels[0], "slices": len(result.slices), "seconds": seconds,
                               "slices_per_s": len(result.slices) / seconds, "encoder_calls": result.encoder_calls}
    say(f"cold propagation: {len(result.slices)} slices in {seconds:.1f} s")
    cold.close()

    # 2. naive baseline, cold: every slice encoded and decoded once; this fills the cache with the whole volume
    full = Predictor(model, cache_mib=4096)
    started = time.perf_counter()
    naive_baseline(full, volume, box, axis=axis, window=window, volume_id="colin27")
    seconds = time.perf_counter() - started
    out["naive_cold"] = {"slices": n, "seconds": seconds, "slices_per_s": n / seconds}
    out["cache"] = {"slices": len(full.cache), "mib": full.cache.nbytes / 2**20,
                    "mib_per_slice": full.cache.nbytes / 2**20 / max(len(full.cache), 1)}
    say(f"naive baseline, cold: {n} slices in {seconds:.1f} s; cache {out['cache']['mib']:.0f} MiB")

    # 3. warm: every structure, propagation and baseline from the cached embeddings
    rows = []
    runs = [(label, ()) for label in labels] + [(label, (extra,)) for label, extra in TWO_SEEDS.items()
                                                if label in labels and axis == 0]
    for label, extra in runs:
        row = evaluate_structure(full, volume, labelmap, label, axis, window, "colin27", extra_seeds=extra)
        row["name"] = names.get(label, str(label))
        row["set"] = "dev" if label in DEV_LABELS else "held-out" if label in HELDOUT_LABELS else ""
        rows.append(row)
        say(f"{row['name']:>14s}{' + ' + str(extra) if extra else ''}: Dice {row['dice']:.3f} vs naive "
            f"{row['dice_naive']:.3f} (naive on the true range {row['dice_naive_true_range']:.3f}); extent "
            f"{row['extent']} true {row['true_extent']}; {row['summary']}")
    out["structures"] = rows
    visited = sum(r["slices_visited"] for r in rows)
    out["propagation_warm"] = {"slices": visited, "seconds": sum(r["seconds"] for r in rows),
                               "slices_per_s": visited / sum(r["seconds"] for r in rows)}
    out["naive_warm"] = {"slices": n * len(rows), "seconds": sum(r["naive_seconds"] for r in rows),
                         "slices_per_s": n * len(rows) / sum(r["naive_seconds"] for r in rows)}
    full.close()
    return out


def format_table(result: dict) -> str:
    lines = ["| structure (AAL label) | set | seed slice | true extent | propagation extent | stop error low / high | "
             "Dice propagation | Dice naive | naive on the true extent only |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["structures"]:
        seeds = ", ".join(str(i) for i in [r["seed_slice"]] + r["extra_seeds"])
        lines.append(f"| {r['name']} ({r['label']}) | {r['set']} | {seeds} | "
                     f"{r['true_extent'][0]}..{r['true_extent'][1]} | {r['extent'][0]}..{r['extent'][1]} | "
                     f"{r['stop_error'][0]:+d} / {r['stop_error'][1]:+d} | **{r['dice']:.3f}** | "
                     f"{r['dice_naive']:.3f} | {r['dice_naive_true_range']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=list(DEFAULT_LABELS))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = bench_propagation(args.labels)
    print(format_table(result))
    for key in ("propagation_cold", "propagation_warm", "naive_cold", "naive_warm"):
        print(f"{key}: {result[key]['slices_per_s']:.2f} slices/s ({result[key]['slices']} slices, "
              f"{result[key]['seconds']:.1f} s)")
    print(f"embedding cache: {result['cache']['mib']:.0f} MiB for {result['cache']['slices']} slices")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
