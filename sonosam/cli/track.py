"""`sonosam track`: track structures through an ultrasound cine loop.

    sonosam track CINE.dcm --frame 0 --object LV --box 300,70,440,270 --object LA --box 305,262,425,345 -o OUT/
    sonosam track CINE.dcm --frame 0 --auto LV_blood_pool --ppn echo.ppn.pt -o OUT/     # no clicks

Each ``--object NAME`` starts a group; the ``--box``/``--point`` options after it belong to it (without any
``--object``, one object called "object"). Writes into OUT/: ``segmentation.seq.nrrd`` (Slicer
segmentation sequence: a labelmap sequence, label i = object i), ``overlay.gif`` and ``strip.png``,
``confidence.csv``, ``interventions.json``/``.csv`` (frames where the tracker asks for a human look:
on the command line nobody answers, so it records them and goes on) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import DataFileError, InputImageError, PromptError
from . import (check_prompts_inside, float_in, int_at_least, load_model_from_args, name_argument, parse_box, parse_point,
               split_points)


class _ObjectAction(argparse.Action):
    """--object/--box/--point in command-line order -> [{"name", "box", "points"}...] in ``dest``."""

    def __call__(self, parser, namespace, value, option_string=None):
        groups = getattr(namespace, "objects", None)
        if groups is None:
            groups = []
            namespace.objects = groups
        if option_string == "--object":
            groups.append({"name": value, "box": None, "points": []})
            return
        if not groups:
            groups.append({"name": "object", "box": None, "points": []})
        group = groups[-1]
        if option_string == "--box":
            if group["box"] is not None:
                raise argparse.ArgumentError(self, f"object {group['name']!r} has two boxes; start another with --object")
            group["box"] = value
        else:
            group["points"].append(value)


def register(subparsers):
    parser = subparsers.add_parser("track", help="track structures through a cine loop (with confidence and interventions)",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("cine", help="multi-frame ultrasound DICOM (or .npy (T, H, W))")
    parser.add_argument("-o", "--output", required=True, help="output folder (created)")
    parser.add_argument("--frame", type=int_at_least(0), default=0, help="frame the prompts are on (default 0)")
    parser.add_argument("--object", type=name_argument, action=_ObjectAction, dest="objects", metavar="NAME",
                        help="start a new object; the --box/--point that follow belong to it (repeatable)")
    parser.add_argument("--box", type=parse_box, action=_ObjectAction, dest="objects", metavar="X0,Y0,X1,Y1",
                        help="box around the current object in pixel coordinates")
    parser.add_argument("--point", type=parse_point, action=_ObjectAction, dest="objects", metavar="X,Y[,LABEL]",
                        help="a click on the current object (label 1 or 0); repeatable")
    parser.add_argument("--auto", action="append", metavar="CLASS", default=[],
                        help="also track CLASS, started with no clicks from a prompt predictor's mask on --frame "
                             "(needs --ppn; repeatable)")
    parser.add_argument("--ppn", help="prompt predictor file from `sonosam train ppn` (for --auto)")
    parser.add_argument("--model", default="litemedsam", help="model name (see `sonosam models`)")
    parser.add_argument("--checkpoint", help="weights file for --model (default: bundled or cached)")
    parser.add_argument("--threshold", type=float_in(0.0, 1.0), default=0.85,
                        help="confidence at or below which a frame requests an intervention (0: never, 1: always; "
                             "default: %(default)s)")
    parser.add_argument("--model-every", type=int_at_least(1), default=5,
                        help="run the model every N frames (1 = every frame, most accurate and slowest); "
                             "frames between are carried by optical flow unless its evidence is weak (default: %(default)s)")
    parser.add_argument("--frames", type=int_at_least(1), help="track only the first N frames")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=run, objects=None)


def _load_frames(path: Path):
    """(frames (T, H, W), spacing (x, y) mm, frame time ms or None, notes) through the input gate."""
    from ..io import _luminance, read_image

    loaded = read_image(path)
    if loaded.kind != "cine":
        raise InputImageError(f"{path} is a single {'2D image' if loaded.kind == '2d' else 'volume'}, not a loop; "
                              f"tracking needs frames: a multi-frame DICOM or a .npy of shape (T, H, W).")
    frames = loaded.array
    if loaded.vector:
        if frames.dtype != "uint8":
            raise InputImageError(f"{path}: colour frames must be uint8 (T, H, W, 3); got {frames.dtype}.")
        frames = _luminance(frames)
    if loaded.cine is not None:
        return frames, loaded.cine.spacing_mm, loaded.cine.frame_time_ms, loaded.cine.notes
    return frames, (1.0, 1.0), None, list(loaded.notes)


def run(args):
    from ..image import to_uint8_rgb
    from ..io import check_output_folder, output_set
    from ..track.outputs import TRACKING_OUTPUTS, write_tracking_outputs

    # Everything that can be wrong with the command is checked before torch is imported or a model loaded.
    groups = args.objects or []
    if args.auto and not args.ppn:
        raise PromptError("--auto needs --ppn FILE (a prompt predictor from `sonosam train ppn`).")
    if not groups and not args.auto:
        raise PromptError("Nothing to track: give a --box or --point (optionally after --object NAME), "
                          "or --auto CLASS --ppn FILE.")
    names = [g["name"] for g in groups] + list(args.auto)
    if len(set(names)) != len(names):
        raise PromptError(f"Object names must differ; got {names}.")
    for g in groups:
        if g["box"] is None and not g["points"]:
            raise PromptError(f"Object {g['name']!r} has no prompt: give it a --box or --point.")
    out = Path(args.output)
    if out.exists() and Path(args.cine).exists() and out.resolve() == Path(args.cine).resolve():
        raise DataFileError(f"The output folder {out} is the input; give another folder.")
    # before minutes of tracking, not after
    check_output_folder(out, TRACKING_OUTPUTS, args.overwrite, "tracking results", inputs=(args.cine,))
    frames, spacing, frame_time, notes = _load_frames(Path(args.cine))
    if args.frames:
        frames = frames[: args.frames]
    if not 0 <= args.frame < frames.shape[0]:
        raise PromptError(f"--frame {args.frame} is outside the loop (0..{frames.shape[0] - 1}).")
    try:  # the model's input rules (size, finite, not constant) before it loads
        to_uint8_rgb(frames[args.frame])
    except InputImageError as error:
        raise InputImageError(f"{args.cine}: {error}") from None
    for g in groups:
        points, labels = split_points(g["points"])
        try:
            check_prompts_inside(points, labels, g["box"], frames.shape[2], frames.shape[1])
        except PromptError as error:
            raise PromptError(f"Object {g['name']!r}: {error}") from None
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    from ..predictor import Predictor
    from ..track import Tracker

    ppn = None
    if args.auto:
        from ..ppn import load_ppn

        ppn = load_ppn(args.ppn)
        for name in args.auto:
            ppn.class_index(name)   # a class it does not know: said before the model loads
    model = load_model_from_args(args)
    predictor = Predictor(model)
    tracker = Tracker(predictor, frames, threshold=args.threshold, model_every=args.model_every, pause=False)
    start = time.perf_counter()
    for g in groups:
        points, labels = split_points(g["points"])
        tracker.add_object(g["name"], args.frame, box=g["box"], points=points, labels=labels)
    if args.auto:
        from ..ppn import add_auto_object

        for name in args.auto:
            result = add_auto_object(tracker, ppn, name, args.frame)
            print(f"{name}: started from the prompt predictor's mask on frame {args.frame} "
                  f"({int(result.mask.sum())} pixels, objectness {result.objectness:.2f})", file=sys.stderr)

    def progress(done, total):
        print(f"\rtracking {done}/{total} frames", end="", file=sys.stderr, flush=True)

    tracker.run(on_progress=progress)
    elapsed = time.perf_counter() - start
    print(file=sys.stderr)
    tracker.close()

    with output_set([out / name for name in TRACKING_OUTPUTS], folder=out):  # all outputs or none
        summary = write_tracking_outputs(out, tracker, frames, spacing, frame_time, elapsed, overwrite=args.overwrite,
                                         extra={"cine": str(args.cine), "threshold": args.threshold,
                                                "model_every": args.model_every})
    flagged = summary["intervention_frames"]
    print(f"tracked {len(names)} object(s) over {tracker.n_frames} frames in {elapsed:.1f} s "
          f"({summary['frames_per_second']} frames/s, model on {summary['model_frames']} frames); "
          f"{len(tracker.events)} intervention request(s)"
          + (f" on frames {flagged}" if flagged else "") + f"; wrote {out}/")
    return 0
