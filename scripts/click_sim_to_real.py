"""Sim-to-real check of click models on real echo loops, where no expert label exists (issue 14): the base
LiteMedSAM's answer to a box is the reference, and each click model is scored by how well its answers to
simulated clicks agree with it (Dice), with overlays to look at.

    python -m scripts.click_sim_to_real --cache runs/cache --models litemedsam_clicks runs/clicks_v3/decoder.pth \
        --figure docs/images/click_sim_to_real.png --json runs/sim_to_real.json

Loops: the A4C loop of ``pydicom-data`` (the frames of its held-out time blocks, every 3rd: none of them was
trained on; the left ventricle and left atrium from the tracker's boxes ``LV_BOX`` / ``LA_BOX``, drawn once
for the whole loop) and, when ``deid-data`` is installed, its parasternal long-axis loop with colour Doppler
(every 3rd frame; the largest dark blood pool of ``click_data.blood_pools`` when it has >= 2000 pixels - the
chamber nearest the probe on the frames where it is found - boxed with a 10 % margin). Clicks
as ``sonosam evaluate``: the first at the centre of the box answer, then at the centre of the largest
disagreement. The agreement is not accuracy: it says whether a click model behaves on real frames as the box
model does, not which is right.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def a4c_cases():
    from sonosam.track.synthetic import LA_BOX, LV_BOX, echo_frame
    from sonosam.train.click_data import slab_part

    frames = [i for i in range(0, 120, 3) if slab_part(i, 15) == "test"]
    return [(f"A4C frame {i} {name}", echo_frame(i), box) for i in frames
            for name, box in (("LV", LV_BOX), ("LA", LA_BOX))]


def plax_cases():
    """The deid-data PLAX loop's frames with a model-free box (None when the package is not installed)."""
    from sonosam.data import echo_plax_path
    from sonosam.errors import DataFileError
    from sonosam.io.cine import _luminance
    from sonosam.masks import bounding_box
    from sonosam.train.click_data import blood_pools

    try:
        path = echo_plax_path()
    except DataFileError as error:
        print(error)
        return []
    from pydicom.pixels import pixel_array

    cases = []
    for i in range(0, 30, 3):
        frame = _luminance(pixel_array(str(path), index=i))
        pools = blood_pools(frame)
        if (pools == 1).sum() < 2000:   # small pools here are gaps between Doppler box lines, not chambers
            continue
        x0, y0, x1, y1 = bounding_box(pools == 1)
        mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
        h, w = frame.shape
        box = (max(0, x0 - mx), max(0, y0 - my), min(w - 1, x1 + mx), min(h - 1, y1 + my))
        cases.append((f"PLAX frame {i} largest pool", frame, box))
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.click_sim_to_real", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="runs/cache")
    parser.add_argument("--models", nargs="+", default=["litemedsam_clicks"],
                        help="click models: names or .pth files, LABEL=PATH to name one")
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--figure", default=None, help="overlay PNG (a few cases, small)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from sonosam.evaluate.datasets import Sample
    from sonosam.evaluate.harness import evaluate
    from sonosam.models import load_model
    from sonosam.train.cache import EmbeddingStore
    from sonosam.train.finetune import clickable
    from sonosam.train.validate import CachedPredictor

    base = load_model("litemedsam")
    store = EmbeddingStore(args.cache, base)
    reference = CachedPredictor(base, store)
    models = {}
    for spec in args.models:   # NAME or LABEL=NAME (a label for a checkpoint path in the tables and figure)
        label, _, name = spec.rpartition("=")
        model = load_model(name)
        models[label or (Path(name).stem if name.endswith(".pth") else name)] = CachedPredictor(
            clickable(model, mask="mask" in model.spec.prompt_kinds), store)
    loops = {"A4C (pydicom-data)": a4c_cases(), "PLAX (deid-data)": plax_cases()}
    report, shown = {}, []
    for loop, cases in loops.items():
        if not cases:
            continue
        samples = []
        for label, frame, box in cases:
            answer = reference.predict(frame, box=box).mask
            if answer.sum() < 50:
                print(f"{label}: the box answer is empty, skipped")
                continue
            samples.append(Sample(frame, answer, label, (label,), 1, {"box": [float(v) for v in box]}))
        report[loop] = {"cases": len(samples)}
        for name, predictor in models.items():
            result = evaluate(predictor, samples, n_clicks=args.clicks, start="point", progress=False)
            curves = np.array(result.curves, dtype=float)
            report[loop][name] = {f"agreement@{k + 1}": float(np.nanmean(curves[:, k])) for k in range(args.clicks)}
            report[loop][name]["per_case"] = {s.name: [round(float(v), 4) for v in c]
                                              for s, c in zip(samples, curves)}
        for s in samples[::max(1, len(samples) // 2)][:2]:
            shown.append((loop, s))
    for loop, rows in report.items():
        print(f"\n{loop}: {rows['cases']} cases; Dice of each click model's answer with the base model's box answer")
        print("| model | " + " | ".join(f"{k} click{'s' if k > 1 else ''}" for k in range(1, args.clicks + 1)) + " |")
        print("|---|" + "---|" * args.clicks)
        for name in models:
            print(f"| {name} | " + " | ".join(f"{100 * rows[name][f'agreement@{k}']:.1f}"
                                              for k in range(1, args.clicks + 1)) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.figure:
        overlay_figure(shown, reference, models, Path(args.figure))
    return 0


def overlay_figure(shown, reference, models, path: Path) -> None:
    """One row per case: the base model's box answer, then each click model's answer to one click at its
    centre (as the protocol's first click)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    from sonosam.evaluate.clicks import first_click

    cols = 1 + len(models)
    fig, axes = plt.subplots(len(shown), cols, figsize=(2.6 * cols, 2.2 * len(shown)), squeeze=False)
    for row, (loop, s) in enumerate(shown):
        x0, y0, x1, y1 = s.meta["box"]
        crop = _crop(s.mask, s.image.shape, margin=40)
        click = first_click(s.mask, 0.0, np.random.default_rng(0)).xy
        panels = [("LiteMedSAM, box", s.mask, None)]
        for name, predictor in models.items():
            panels.append((f"{name}, 1 click", predictor.predict(s.image, points=[click], labels=[1]).mask, click))
        for col, (title, mask, pt) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(s.image[crop], cmap="gray", vmin=0, vmax=255)
            edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
            ax.imshow(np.ma.masked_where(~edge[crop], edge[crop]), cmap="autumn", alpha=0.9)
            if col == 0:
                ax.add_patch(plt.Rectangle((x0 - crop[1].start, y0 - crop[0].start), x1 - x0, y1 - y0,
                                           fill=False, color="cyan", lw=1))
            else:
                ax.plot(pt[0] - crop[1].start, pt[1] - crop[0].start, "c+", ms=8)
                inter = (mask & s.mask).sum()
                title += f"\nagreement {200 * inter / max(mask.sum() + s.mask.sum(), 1):.0f} %"
            ax.set_title(title if col else f"{s.name}\n{title}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=55)
    from PIL import Image   # 128 colours: a third of the bytes, fit for docs/

    Image.open(path).convert("RGB").quantize(128).save(path, optimize=True)
    print("wrote", path, f"{path.stat().st_size / 1024:.0f} KiB")


def _crop(mask, shape, margin):
    ys, xs = np.nonzero(mask)
    return (slice(max(0, ys.min() - margin), min(shape[0], ys.max() + margin)),
            slice(max(0, xs.min() - margin), min(shape[1], xs.max() + margin)))


if __name__ == "__main__":
    raise SystemExit(main())
