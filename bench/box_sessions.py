"""Held-out 2D box sessions as the Slicer effect runs them: one box, then corrective clicks, on eight fixed sets.

    python -m bench.box_sessions -o runs/sessions.json [--sets mri ct ...] [--model litemedsam_clicks]
    python -m bench.box_sessions --compare runs/before.json runs/after.json

Each sample: the reference's tight box, the seed check's suggestion taken as the preview shows it
(``pick_first="suggested"``), then 4 corrective clicks at the largest error, corrected locally
(``sonosam.masks.local_correction``), through the user's route (``sonosam.zoom.interactive_predictor``). The sets
(docs/volume.md, stop 56 on; none of them trained or tuned on): the click tables' four test parts (MRI, ultrasound-
style MRI, head CT, echo: up to 20 evenly spaced structure-images each, `sonosam.train.click_data`), the five patients'
lesions (every slice of 20 pixels or more) and the ICBM152 template's ventricles and white matter (64 evenly
spaced structure-slices per axis). The sets are built here so that a rule measured in one session can be measured
again in the next on the same samples. A rule is compared by running this at two commits and ``--compare``-ing the
two files (each records its commit): Dice@1..5 per set, their mean, and per set the samples higher and lower at
Dice@5; runs of different models or click counts, or without a set in common, are refused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SETS = ("mri", "mri_us", "ct", "echo", "lesions", "icbm152_0", "icbm152_1", "icbm152_2")
ICBM152_STRUCTURES = ("Lateral_Ventricle_L", "Lateral_Ventricle_R", "White_Matter_L", "White_Matter_R")


def samples(name: str) -> list:
    """The fixed samples of set ``name`` (`SETS`)."""
    from sonosam.evaluate.datasets import _thin, load_samples, samples_from_arrays

    if name in ("mri", "mri_us", "ct", "echo"):
        from sonosam.train.click_data import build_sources

        return _thin(build_sources((name,))[name].split.test, 20)
    if name == "lesions":
        from sonosam.data import lesions_dir

        return load_samples(lesions_dir(), min_area=20)
    if name.startswith("icbm152_"):
        from scripts.reference_labels import label_map
        from sonosam.references import load_subject

        subject = load_subject("icbm152")
        labels, _ = label_map(subject, ICBM152_STRUCTURES)
        found = samples_from_arrays(subject.volume.array, labels, labels=[1, 2, 3, 4], axis=int(name[-1]),
                                    min_area=100, name="icbm152", kind="volume")
        return _thin(found, 64)
    raise SystemExit(f"unknown set {name!r}: choose from {', '.join(SETS)}")


def run(sets, model_name: str = "litemedsam_clicks", clicks: int = 5) -> dict:
    from sonosam.evaluate import evaluate
    from sonosam.models import load_model
    from sonosam.predictor import Predictor
    from sonosam.zoom import interactive_predictor

    from sonosam.evaluate.report import code_version

    predictor = Predictor(load_model(model_name, device="cpu"))
    report = {"model": model_name, "clicks": clicks, "code": code_version(), "sets": {}}
    for name in sets:
        began = time.perf_counter()
        result = evaluate(interactive_predictor(predictor), samples(name), n_clicks=clicks, start="box",
                          local_corrections=True, pick_first="suggested", progress=False, on_error="raise")
        picked = [r.picked for r in result.images]
        report["sets"][name] = {"samples": [r.name.rsplit("/", 1)[-1] for r in result.images],  # without the folder
                                "picked": picked, "curves": result.curves}
        print(f"{name}: {len(picked)} samples, took the suggestion {sum(map(bool, picked))}, Dice@1..{clicks} "
              f"{_row(result.curves)} ({time.perf_counter() - began:.0f} s)", flush=True)
    predictor.close()
    return report


def _row(curves) -> str:
    return " / ".join(f"{v:.1f}" for v in 100 * np.nanmean(np.asarray(curves, float), axis=0))


def compare(before: dict, after: dict) -> str:
    """Markdown: per set (samples that took the suggestion) Dice@1..5 before and after, samples higher / lower at
    the last interaction; then the mean of the sets."""
    for field in ("model", "clicks"):   # runs of another model or click count are not a before and after
        if before.get(field) != after.get(field):
            raise SystemExit(f"error: the runs differ in {field} ({before.get(field)} before, {after.get(field)} "
                             f"after); compare two runs of one model and click count")
    if not set(before["sets"]) & set(after["sets"]):
        raise SystemExit(f"error: the runs share no set (before: {', '.join(before['sets'])}; after: "
                         f"{', '.join(after['sets'])}); run both with the same --sets")
    lines = ["| set (took the suggestion) | before | after | last Dice, samples higher / lower |", "|---|---|---|---|"]
    means = {"before": [], "after": []}
    for name, old in before["sets"].items():
        new = after["sets"].get(name)
        if new is None:
            continue
        if new["samples"] != old["samples"]:
            raise SystemExit(f"{name}: the two runs hold different samples; run both at the same data")
        a, b = np.asarray(old["curves"], float), np.asarray(new["curves"], float)
        means["before"].append(np.nanmean(a, axis=0))
        means["after"].append(np.nanmean(b, axis=0))
        higher, lower = int((b[:, -1] > a[:, -1] + 1e-9).sum()), int((b[:, -1] < a[:, -1] - 1e-9).sum())
        took = sum(map(bool, old["picked"]))
        lines.append(f"| {name} ({took} of {len(a)}) | {_row(a)} | {_row(b)} | {higher} / {lower} |")
    mean = {arm: " / ".join(f"{v:.2f}" for v in 100 * np.mean(rows, axis=0)) for arm, rows in means.items()}
    lines.append(f"| mean of the {len(means['before'])} sets | {mean['before']} | {mean['after']} | |")
    return "\n".join(lines)


def _read_run(path) -> dict:
    try:
        run = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(run, dict) or not isinstance(run.get("sets"), dict):
            raise ValueError("no 'sets'")
        return run
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {path}: not a bench.box_sessions run ({getattr(error, 'strerror', None) or error}); "
                         "give two files written by -o") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.box_sessions", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", help="write the per-sample curves here (JSON)")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--model", default="litemedsam_clicks")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="instead: compare two runs' files")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(*(_read_run(path) for path in args.compare)))
        return 0
    if not args.out:
        parser.error("give -o OUT (or --compare BEFORE AFTER)")
    from sonosam.errors import SonoSAMError
    from sonosam.io.atomic import check_output_path, write_text

    try:
        check_output_path(args.out, args.overwrite, parents=True)   # before the run, not after it
    except SonoSAMError as error:
        raise SystemExit(f"error: {error}") from None
    report = run(args.sets, args.model)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(report) + "\n", overwrite=args.overwrite)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
