"""`sonosam evaluate`: the simulated-click protocol on labelled data, for one or more models.

    sonosam evaluate --data DIR_OR_LIST [--data IMAGE,LABEL] --model litemedsam [--model sam_vit_b=ckpt.pth]
                     [--label 7] [--clicks 10] [--start auto|point|box ...] -o report/

Writes report/per_image.csv, summary.csv, summary.md, dice_vs_clicks.png (one curve per model) and run.json (the
arguments, the code's version and commit, each model's checkpoint sha256, backend and pipeline).
``--data colin27`` uses the real Colin27 MRI with AAL labels (Debian mricron-data, `make data`); ``--data lesions``
five patients' lesions on CT and MRI with an expert's labels (pyradiomics' test cases, `make data`).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..errors import DataFileError, SonoSAMError
from . import float_in, int_at_least


def _slices(text: str) -> range | list[int]:
    try:
        if ":" in text:
            start, stop = text.split(":", 1)
            chosen = range(int(start), int(stop))
        else:
            return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"slices {text!r} must be START:STOP or I,J,K") from None
    if not chosen:
        raise argparse.ArgumentTypeError(f"slices {text!r} hold no slice; give START:STOP with START below STOP")
    return chosen


def register(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="simulated-click evaluation (Dice vs clicks, NoC@80/90, FR@80/90) on labelled data",
        description="Runs the SonoSAM papers' click protocol: a first click at the ground-truth centroid (or a "
                    "box), then clicks at the centre of the largest error region; writes per-image and summary "
                    "tables and a Dice-vs-clicks plot.")
    parser.add_argument("--data", action="append", required=True, metavar="SOURCE",
                        help="a folder (images/ + labels/, or NAME + NAME_label files), a .csv/.txt list of "
                             "'image,label' lines, an IMAGE,LABEL pair, 'colin27' or 'lesions'; repeatable")
    parser.add_argument("--model", action="append", metavar="NAME[=CHECKPOINT]",
                        help="model to evaluate (see `sonosam models`), optionally with its weights file; "
                             "repeatable for a comparison (default: litemedsam)")
    parser.add_argument("--label", type=int_at_least(1), action="append", metavar="L",
                        help="label value(s) to evaluate, each needed in every --data (default: every non-zero label; "
                             "colin27: 7,8,85,86)")
    parser.add_argument("--clicks", type=int_at_least(1, 100), default=10, help="interactions per image, first prompt included (10)")
    parser.add_argument("--start", choices=("auto", "point", "box"), action="append",
                        help="first prompt: centroid click, ground-truth box, or auto = click if the model takes "
                             "clicks, else box (default); repeatable: each model from each start, in one report")
    parser.add_argument("--box-jitter", type=float_in(0.0, 1.0), default=0.0,
                        help="move each box side by up to this fraction of the box size (0)")
    parser.add_argument("--box-margin", type=int_at_least(0), default=0, help="grow the box by this many pixels (0)")
    parser.add_argument("--local-corrections", action="store_true",
                        help="keep each corrective click's change only near it, where it flipped the clicked "
                             "pixel (a click the model ignored changes the disk up to the mask's edge), as the "
                             "Slicer effect does (sonosam.masks.local_correction); default: SAM's protocol, the "
                             "whole new answer")
    parser.add_argument("--pick-first", nargs="?", const="closest", choices=("closest", "suggested"),
                        help="after the first prompt the simulated user takes a mask of the seed check's list (the "
                             "Slicer effect's Mask list: for a box its darker or brighter part, for a click the region "
                             "it is in): 'closest' (the default when given alone) the one closest to the reference, "
                             "where it beats the model's answer (a diligent user who picks by the reference: an upper "
                             "bound); 'suggested' the one the check suggests for a box. Corrections start from it")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2),
                        help="numpy axis of 3D volumes to slice along (0 = k, axial for axial scans)")
    parser.add_argument("--slices", type=_slices, metavar="A:B|I,J", help="only these slice/frame indices")
    parser.add_argument("--min-area", type=int_at_least(1), default=100, help="skip structures smaller than this in a slice (px)")
    parser.add_argument("--max-images", type=int_at_least(1), help="evaluate an evenly spaced subset of this many samples")
    parser.add_argument("--seed", type=int, default=0, help="random seed for box jitter (0)")
    parser.add_argument("-o", "--out", required=True, help="report folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def _parse_model(text: str) -> tuple[str, str | None]:
    name, _, checkpoint = text.partition("=")
    return name.strip(), (checkpoint.strip() or None)


def _sources(items: list[str]):
    sources = []
    for item in items:
        if item.lower() == "colin27":
            from ..data import mri_colin27_paths

            sources.append(tuple(mri_colin27_paths()))
        elif item.lower() == "lesions":
            from ..data import lesions_dir

            sources.append(lesions_dir())
        elif "," in item and not Path(item).exists():
            image, label = (part.strip() for part in item.split(",", 1))
            sources.append((Path(image), Path(label)))
        else:
            sources.append(Path(item))
    return sources


def _samples(args) -> list:
    """The samples of every --data, each read with the labels asked for (colin27 without --label: its four)."""
    from ..evaluate import load_samples
    from ..evaluate.datasets import COLIN27_LABELS, _thin

    samples = []
    for item, source in zip(args.data, _sources(args.data)):
        labels = args.label if args.label is not None or item.lower() != "colin27" else list(COLIN27_LABELS)
        samples += load_samples(source, labels=labels, axis=args.axis, min_area=args.min_area, slices=args.slices,
                                every_label=True)
    return _thin(samples, args.max_images)


def run(args) -> int:
    from ..evaluate import evaluate, model_record, run_record, write_report
    from ..evaluate.report import format_markdown, summary_table

    from ..evaluate.report import REPORT_FILES
    from ..io import check_input_file, check_output_folder

    # Everything that can be wrong with the command is checked before torch is imported or a model loaded.
    out = Path(args.out)
    check_output_folder(out, REPORT_FILES, args.overwrite, "a report",
                        inputs=[part for item in args.data for part in item.split(",")])
    from ..evaluate.harness import check_starts

    for text in args.model or ["litemedsam"]:   # a misspelt model or a start it cannot take: before the data
        name, checkpoint = _parse_model(text)
        check_starts(name, [] if checkpoint is not None else args.start or ["auto"])
        if checkpoint is not None:
            check_input_file(checkpoint, what="checkpoint")
    samples = _samples(args)
    print(f"{len(samples)} samples from {', '.join(args.data)}", file=sys.stderr)

    from . import load_model_from_args
    from ..predictor import Predictor
    from ..zoom import interactive_predictor

    results, models = [], []
    for text in args.model or ["litemedsam"]:
        name, checkpoint = _parse_model(text)
        model = load_model_from_args(args, name, checkpoint)
        predictor = Predictor(model)   # one per model: its embedding cache serves every start
        routed = interactive_predictor(predictor)   # the route a user's prompts take
        models.append(model_record(model, routed))
        for start in dict.fromkeys(args.start or ["auto"]):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = evaluate(routed, samples, n_clicks=args.clicks, start=start,
                                  box_jitter=args.box_jitter, box_margin=args.box_margin, seed=args.seed,
                                  name=name if checkpoint is None else f"{name} ({Path(checkpoint).name})",
                                  progress=not args.no_progress, local_corrections=args.local_corrections,
                                  pick_first=args.pick_first or False)
            for message in dict.fromkeys(str(w.message) for w in caught):
                print(f"warning: {message}", file=sys.stderr)
            results.append(result)
        predictor.close()
    paths = write_report(results, out, overwrite=args.overwrite, run=run_record(vars(args), models))
    print(format_markdown(summary_table(results)))
    print("\n".join(f"wrote {path}" for path in paths.values()), file=sys.stderr)
    errors = sum(len(r.errors) for r in results)
    if errors:
        print(f"sonosam evaluate: {errors} sample(s) failed; see {paths['summary_md']}", file=sys.stderr)
        return 1
    return 0
