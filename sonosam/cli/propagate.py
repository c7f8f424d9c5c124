"""`sonosam propagate`: prompt one slice of a volume, carry the structure through the volume, write it.

    sonosam propagate ch2.nii.gz --slice 74 --box 95,110,125,150 -o putamen.seg.nrrd
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import DataFileError, PromptError
from . import (add_prompt_arguments, check_prompts_inside, float_in, int_at_least, load_model_from_args, name_argument,
               seed_choice, split_points)


def register(subparsers):
    parser = subparsers.add_parser(
        "propagate", help="segment a structure through a CT/MRI volume from one prompted slice",
        description="Segment slice N from a box (or clicks, for click-capable models) and propagate the result "
                    "to the neighbouring slices both ways until the structure ends. Coordinates are voxel "
                    "indices in that slice: x = column, y = row (axis k: x = i, y = j; axis j: x = i, y = k; "
                    "axis i: x = j, y = k).")
    parser.add_argument("volume", help="volume file (.nrrd, .nii.gz, .mha) or DICOM folder")
    parser.add_argument("--slice", type=int_at_least(0), required=True, metavar="N", help="index of the prompted slice")
    parser.add_argument("--axis", default="k", choices=["k", "j", "i"], help="slicing axis (default k: axial "
                        "for an axial scan)")
    add_prompt_arguments(parser)
    parser.add_argument("--adapters", metavar="FILE", help="Med-SA adapter weights (from `sonosam train adapters`)")
    parser.add_argument("--direction", default="both", choices=["both", "forward", "backward"])
    parser.add_argument("--max-slices", type=int_at_least(1), metavar="N", help="at most N slices each way from the seed")
    parser.add_argument("--span", metavar="FIRST,LAST", help="the structure's first and last slice, if you know "
                        "them: no front runs past them (inside them the stop rules judge as usual)")
    parser.add_argument("--min-score", type=float_in(0.0, 1.0), help="stop below this predicted IoU (default 0.5)")
    parser.add_argument("--window", metavar="LO,HI", help="intensity window (e.g. 0,100 for brain CT; default: "
                        "the volume's 0.5/99.5 percentiles)")
    parser.add_argument("--no-seed-check", action="store_true", help="propagate the model's answer on the seed "
                        "slice even when it disagrees with the box (default: take the suggested alternative)")
    parser.add_argument("--seed-choice", type=int_at_least(0), metavar="N", help="propagate from mask N of the "
                        "seed check's choices for the prompt (0: the model's answer; the others, such as the box's "
                        "darker or brighter part or the region a lone click is in, are listed after a run, as the "
                        "Slicer effect's Mask list shows them)")
    parser.add_argument("--no-follow-motion", action="store_true", help="prompt each slice where the previous "
                        "slice's mask was (default: that mask is first moved onto the slice by optical flow, so a "
                        "structure that shifts in-plane from slice to slice is followed)")
    parser.add_argument("--carrier", default="auto", metavar="MODEL|auto|none",
                        help="a second decoder over the same image encoder that answers the propagated slices (it "
                        "continues the previous slice's mask); auto (default): the one shipped for the model, if any "
                        "(litemedsam_slices for litemedsam_clicks); none: the model answers every slice")
    parser.add_argument("--name", type=name_argument, default="Segment_1", help="segment name in the output")
    parser.add_argument("-o", "--output", required=True, help="output .seg.nrrd or .nii.gz (labelmap)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..image import axis_index, check_image_size
    from ..io import check_input_file, check_output_path, read_volume, write_segmentation

    # Everything that can be wrong with the command is checked before torch is imported or a model loaded.
    output = Path(args.output)
    if not output.name.lower().endswith((".seg.nrrd", ".nii.gz", ".nii", ".nrrd")):
        raise DataFileError(f"Output {output} must be .seg.nrrd or .nii.gz.")
    check_output_path(output, args.overwrite, inputs=(args.volume,))
    points, labels = split_points(args.point)
    if args.box is None and points is None:
        raise PromptError("Give a prompt on the seed slice: --box X0,Y0,X1,Y1 or --point X,Y[,LABEL].")
    if args.adapters:
        check_input_file(args.adapters, what="adapter weights file")
    volume = read_volume(args.volume)
    axis = axis_index(args.axis)
    if args.slice >= volume.shape[axis]:
        raise PromptError(f"--slice {args.slice} is outside the volume: 0..{volume.shape[axis] - 1} along axis {args.axis}.")
    height, width = [n for i, n in enumerate(volume.shape) if i != axis]
    check_image_size(height, width, f"{args.volume}: a slice across axis {args.axis}")
    check_prompts_inside(points, labels, args.box, width, height)
    if args.seed_choice is not None and (args.no_seed_check or args.adapters):
        raise PromptError("--seed-choice picks among the masks the seed check offers: leave out --no-seed-check "
                          "and --adapters.")
    span = None
    if args.span:
        try:
            span = tuple(int(v) for v in args.span.split(","))
        except ValueError:
            span = ()
        if len(span) != 2 or not 0 <= span[0] <= args.slice <= span[1] < volume.shape[axis]:
            raise PromptError(f"--span {args.span!r} must be FIRST,LAST: two slice indices with FIRST <= --slice "
                              f"{args.slice} <= LAST, within 0..{volume.shape[axis] - 1} along axis {args.axis}.")

    from ..models import get_spec
    from ..predictor import Predictor
    from ..volume import PropagationOptions, Seed, propagate, volume_cache_id

    carrier = None if args.carrier.lower() == "none" else args.carrier
    if carrier not in (None, "auto"):
        get_spec(carrier)   # an unknown name is refused before any weights are read
    model = load_model_from_args(args)
    if args.adapters:
        from ..adapters import load_adapters

        load_adapters(model, args.adapters)
    options = PropagationOptions(direction=args.direction, max_slices=args.max_slices,
                                 seed_check=not args.no_seed_check, follow_motion=not args.no_follow_motion,
                                 carrier=carrier, span=span)
    if args.window:
        try:
            low, high = (float(v) for v in args.window.split(","))
        except ValueError:
            raise PromptError(f"--window {args.window!r} is not two numbers LO,HI (e.g. 0,100).") from None
        if not high > low:
            raise PromptError(f"--window {args.window!r}: HI must be above LO.")
        options.window = (low, high)
    if args.min_score is not None:
        options.min_score = args.min_score

    def progress(done, total, info):
        if not args.quiet:
            score = "" if info.score != info.score else f" IoU {info.score:.2f}"
            print(f"\r[{done}/{total}] slice {info.index}: {info.status}{score} {info.area} px {info.reason}"
                  .ljust(78)[:100], end="", file=sys.stderr, flush=True)

    predictor = Predictor(model)
    seed, chosen = Seed(args.slice, box=args.box, points=points, labels=labels), None
    try:
        volume_id = volume_cache_id(volume.array)  # one hash; the check's embedding is the run's
        if args.seed_choice is not None:   # the user's pick among the check's masks, propagated as an accepted mask
            chosen = _seed_choice(predictor, volume.array, axis, seed, options, args.seed_choice, volume_id)
            seed = Seed(args.slice, mask=chosen.mask)
        result = propagate(predictor, volume.array, [seed], axis=args.axis, options=options, progress=progress,
                           volume_id=volume_id)
    finally:
        predictor.close()
        if not args.quiet:
            print(file=sys.stderr)
    write_segmentation(output, result.mask, volume.geometry, [{"name": args.name, "label": 1}],
                       overwrite=args.overwrite)
    if chosen is not None:
        print(f"seed slice {args.slice}: propagated from choice {args.seed_choice}, {chosen.source}", file=sys.stderr)
    for index, check in sorted(result.seed_checks.items()):
        if not check.ok:
            print(f"seed slice {index}: {check.summary()}", file=sys.stderr)
        elif len(check.candidates) > 1:
            print(f"seed slice {index}: other masks for the {'box' if args.box is not None else 'click'}: "
                  + check.listing(1), file=sys.stderr)
        if len(check.candidates) > 1 and not args.adapters:   # --seed-choice is refused with adapters
            print("  (--seed-choice N propagates from one of them)", file=sys.stderr)
    print(f"{output}: {result.summary()}; {result.encoder_calls} slices encoded in {result.seconds:.1f} s")
    return 0


def _seed_choice(predictor, volume, axis, seed, options, choice, volume_id):
    """Choice `choice` of the seed check's masks for the seed's prompt, checked as the run would check it (same
    window and cache key, so the run reuses the seed slice's embedding)."""
    from ..volume import check_seed_slice, slice_of, volume_window

    window = tuple(options.window) if options.window is not None else volume_window(volume)
    check = check_seed_slice(predictor, slice_of(volume, axis, seed.index), seed, options, window=window,
                             key=(volume_id, axis, seed.index))
    return seed_choice(check, choice, "box" if seed.box is not None else "prompt")
