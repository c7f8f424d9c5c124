"""`sonosam segment`: one 2D image (a cine frame, a volume slice or a picture) + prompts -> mask files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import InputImageError, PromptError
from ..image import axis_index
from ..prompts import Prompts
from . import (add_prompt_arguments, check_prompts_inside, int_at_least, load_model_from_args, seed_choice,
               split_points)
from .images import MASK_SUFFIXES, check_mask_format, load_image, mask_outputs



def register(subparsers):
    parser = subparsers.add_parser(
        "segment", help="segment one frame/slice from point or box prompts",
        description="Segment one 2D frame of a cine DICOM, one slice of a volume (NRRD, NIfTI, MHA, DICOM "
                    "folder) or a PNG/JPEG picture. Coordinates are pixels of that 2D image: x = column, y = row.")
    parser.add_argument("image", type=Path)
    parser.add_argument("--frame", "--slice", dest="index", type=int_at_least(0), default=None,
                        help="frame of a cine or slice of a volume (default 0)")
    parser.add_argument("--axis", default="k", choices=["k", "j", "i"],
                        help="volume axis the slice is taken across (default k, axial for most scans)")
    add_prompt_arguments(parser)
    parser.add_argument("--auto", metavar="CLASS", help="segment CLASS with no clicks, from a prompt predictor (--ppn); "
                                                        "--point clicks are added to its prompts")
    parser.add_argument("--ppn", help="prompt predictor file from `sonosam train ppn`")
    parser.add_argument("--no-seed-check", action="store_true",
                        help="write the model's answer to a box even where the seed check finds it wrong (default: "
                             "the check's suggestion, as the Slicer effect previews it)")
    parser.add_argument("--seed-choice", type=int_at_least(0), metavar="N",
                        help="write mask N of the seed check's choices for the prompt (0: the model's answer; the "
                             "others, such as the box's darker or brighter part or the region a lone click is in, are "
                             "listed after a run, as the Slicer effect's Mask list shows them)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help=f"mask file ({', '.join(MASK_SUFFIXES)}); an overlay PNG is written beside it")
    parser.set_defaults(func=run)


def run(args):
    from ..image import to_uint8_rgb
    from ..io import Geometry, check_input_file, output_set, save_overlay_png, write_segmentation

    # Everything that can be wrong with the command is checked before torch is imported or a model loaded.
    output = args.output
    overlay = mask_outputs(output, args.overwrite, (args.image,))
    points, labels = split_points(args.point)
    if args.auto and not args.ppn:
        raise PromptError("--auto needs --ppn FILE (a prompt predictor from `sonosam train ppn`).")
    if args.auto and args.box is not None:
        raise PromptError("--box does not go with --auto: the prompt predictor draws its own box. Leave out --box "
                          "(--point clicks are added to its prompts), or leave out --auto to segment from your box.")
    if args.box is None and points is None and not args.auto:
        raise PromptError("Give a prompt: --box X0,Y0,X1,Y1 or --point X,Y[,LABEL] (or --auto CLASS --ppn FILE).")
    if args.seed_choice is not None and (args.no_seed_check or args.auto):
        raise PromptError("--seed-choice picks among the masks the seed check offers for your prompt: leave out "
                          "--no-seed-check and --auto.")
    ppn = None
    if args.auto:
        from ..ppn import load_ppn

        ppn = load_ppn(check_input_file(args.ppn, what="prompt predictor"))
        ppn.class_index(args.auto)   # a class it does not know, before the model loads
    image, volume, geometry, display = load_image(args.image, args.index, args.axis)
    check_mask_format(output, volume, args.image)
    try:  # the model's own input rules (size, finite, not constant), checked before it loads
        to_uint8_rgb(image)
    except InputImageError as error:
        raise InputImageError(f"{args.image}: {error}") from None
    check_prompts_inside(points, labels, args.box, image.shape[1], image.shape[0])

    from ..predictor import Predictor
    from ..zoom import interactive_predictor

    started = time.perf_counter()
    model = load_model_from_args(args)
    loaded = time.perf_counter()
    predictor = Predictor(model)
    predictor.embedding(image)   # the whole image's, timed on its own (a box's crops are encoded with its answer)
    encoded = time.perf_counter()
    if args.auto:
        from .seeds import run_auto

        prediction, box = run_auto(args, image, model, predictor, ppn)
        args.box = tuple(float(v) for v in box)   # drawn on the overlay: the predicted box prompt
    else:
        route = interactive_predictor(predictor)
        prediction = route.predict(image, Prompts(points, labels, args.box))
        if not args.no_seed_check:
            prediction = _checked(route, image, points, labels, args.box, prediction, args.seed_choice)
    decoded = time.perf_counter()

    mask = prediction.mask
    if volume is not None:  # a slice of a volume: write the whole grid, only this slice filled
        full = np.zeros(volume.shape, dtype=bool)
        np.moveaxis(full, axis_index(args.axis), 0)[args.index or 0] = mask
        mask = full
    elif not output.name.lower().endswith(".png"):
        mask = mask[np.newaxis]
    with output_set([output, overlay], folder=output.parent):  # both files or neither
        write_segmentation(output, mask, geometry or Geometry(),
                           [{"name": "Segment_1", "color": (0.85, 0.3, 0.3)}], overwrite=args.overwrite)
        save_overlay_png(overlay, display, [prediction.mask], points=points, labels=labels, box=args.box,
                         overwrite=args.overwrite)
    for note in prediction.notes:
        print(f"note: {note}")
    score = f"predicted IoU {prediction.score:.3f}" if np.isfinite(prediction.score) else "no predicted IoU"
    print(f"mask: {output} ({int(prediction.mask.sum())} pixels, {score})")
    print(f"overlay: {overlay}")
    print(f"time: model load {loaded - started:.2f} s, encode {encoded - loaded:.2f} s, "
          f"answer {1000 * (decoded - encoded):.0f} ms on {model.device}")
    return 0


def _checked(route, image, points, labels, box, prediction, choice):
    """The seed check of the answer (`sonosam.seed_check`, through the same route as the answer): the candidate a
    preview shows (`preview_index`: the suggestion for a box alone) or the user's `choice`, with the check's findings
    and list as notes. A prompt the check does not look at (no box and no positive click) keeps the answer."""
    from ..prompts import Prediction
    from ..seed_check import check_seed, preview_index

    if box is None and not any(labels or ()):
        if choice:
            raise PromptError("--seed-choice needs a box or a positive click: the seed check looks at those.")
        return prediction
    check = check_seed(route, image, box=box, points=points, labels=labels)
    index = preview_index(check.best, box, points) if choice is None else choice
    chosen = seed_choice(check, index)
    notes = list(prediction.notes) + ([] if check.ok else [f"seed check: {check.summary()}"])
    if len(check.candidates) > 1:
        notes.append(f"choices: {check.listing()} (--seed-choice N writes one of them)")
    if index == 0:
        return Prediction(prediction.masks, prediction.scores, prediction.low_res_logits, notes)
    logits = chosen.logits if chosen.logits is not None else np.zeros_like(prediction.low_res_logits[0])
    return Prediction(np.asarray(chosen.mask, bool)[None], np.array([chosen.score], np.float32), logits[None],
                      notes + [f"wrote choice {index}, {chosen.source}"])
