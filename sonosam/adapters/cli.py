"""`sonosam train adapters`: train Med-SA adapters on volumes + label maps and save only the adapters.

    sonosam train adapters --images ch2.nii.gz --labels aal.nii.gz --label-value 77 -o thalamus.adapters.pth

`register(subparsers)` adds the `adapters` parser to the `train` command's subparsers; `run(args)` runs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import float_in, int_at_least
from ..errors import InputImageError
from ..image import AXES


def register(subparsers):
    parser = subparsers.add_parser(
        "adapters", help="train Med-SA adapters (SD-Trans, HyP-Adpt) on volumes with label maps",
        description="Train Med-SA adapters on 3D volumes and their label maps: slabs of D slices along an axis, "
                    "box/click prompts simulated from the labels, Dice + focal loss, Adam. Only the adapter "
                    "weights are saved (with the base model's name and checksum); load them with "
                    "sonosam.adapters.load_adapters or `--adapters FILE`.")
    parser.add_argument("--images", nargs="+", required=True, metavar="VOLUME", help="volume files (NIfTI, NRRD, ...)")
    parser.add_argument("--labels", nargs="+", required=True, metavar="LABELMAP",
                        help="label maps, one per volume, same grid")
    parser.add_argument("--label-value", nargs="+", type=int_at_least(1), required=True, metavar="N",
                        help="label value(s) of the structure (several values: their union)")
    parser.add_argument("-o", "--output", required=True, help="adapter weights file to write (.pth)")
    parser.add_argument("--model", default="litemedsam", help="base model name (see `sonosam models`)")
    parser.add_argument("--checkpoint", help="weights file for --model (default: bundled or cached)")
    parser.add_argument("--init", metavar="ADAPTERS", help="start from these adapter weights instead of zero")
    parser.add_argument("--axis", choices=sorted(AXES), default="k",
                        help="slice axis of the array [k, j, i] (default k)")
    parser.add_argument("--slab-depth", type=int_at_least(1), default=4, help="slices per slab (default 4)")
    parser.add_argument("--steps", type=int_at_least(1), default=100, help="optimiser steps (default 100)")
    parser.add_argument("--lr", type=float_in(0.0, 1.0, low_open=True), default=1e-4, help="Adam learning rate (default 1e-4)")
    parser.add_argument("--prompt", choices=["auto", "box", "click", "box+click", "mixed"], default="auto",
                        help="simulated prompts (auto: box for box-only models, else mixed)")
    parser.add_argument("--jitter", type=float_in(0.0, 1.0), default=0.1, help="box jitter, fraction of the box size (default 0.1)")
    parser.add_argument("--no-depth-attention", action="store_true", help="no SD-Trans (slices independent)")
    parser.add_argument("--no-hyp-adapter", action="store_true", help="no HyP-Adpt in the mask decoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=run)
    return parser


def _check_init_layout(args) -> None:
    """--init keeps the file's adapter layout: a flag asking for another one is refused, not ignored."""
    from ..errors import TrainingError
    from .modules import read_adapter_file

    config = read_adapter_file(args.init)["config"]
    wrong = [flag for flag, key in (("--no-depth-attention", "depth_attention"), ("--no-hyp-adapter", "hyp_adapter"))
             if getattr(args, flag[2:].replace("-", "_")) and config.get(key, True)]
    if wrong:
        raise TrainingError(f"{' and '.join(wrong)} contradict{'s' if len(wrong) == 1 else ''} {args.init}, whose "
                            "adapters have them (--init keeps the file's layout); leave the flag out, or train "
                            "without --init.")


def run(args) -> int:
    from ..io import read_labels, read_volume

    from ..io import check_input_file, check_output_path

    output = check_output_path(args.output, args.overwrite, inputs=(*args.images, *args.labels), parents=True)
    if args.init:
        check_input_file(args.init, what="adapter weights file")
        _check_init_layout(args)
    if len(args.images) != len(args.labels):
        raise InputImageError(f"{len(args.images)} --images but {len(args.labels)} --labels; "
                              "give one label map per volume.")
    if args.slab_depth < 1 or args.steps < 1:
        raise InputImageError("--slab-depth and --steps must be at least 1.")
    volumes, labels = [], []
    for image_path, label_path in zip(args.images, args.labels):
        volume = read_volume(image_path)
        volumes.append(volume.array)
        labels.append(read_labels(label_path, volume))

    from ..models import load_model
    from .modules import add_medsa_adapters, load_adapters, save_adapters, trainable_share
    from .training import train_adapters

    model = load_model(args.model, checkpoint=args.checkpoint, device=getattr(args, "device", None))
    if args.init:
        load_adapters(model, args.init)
    else:
        add_medsa_adapters(model, depth_attention=not args.no_depth_attention, hyp_adapter=not args.no_hyp_adapter)
    print(f"{model.spec.name} + Med-SA adapters: {trainable_share(model)}")
    result = train_adapters(model, volumes, labels, args.label_value, steps=args.steps, slab_depth=args.slab_depth,
                            lr=args.lr, prompt=None if args.prompt == "auto" else args.prompt, jitter=args.jitter,
                            axis=AXES[args.axis], seed=args.seed, log=print)
    print(result.summary())
    save_adapters(model, output)
    print(f"adapters written to {output}")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (`python -m sonosam.adapters.cli ...`) until the `train` command wires it in."""
    import sys

    from ..errors import SonoSAMError

    parser = argparse.ArgumentParser(prog="sonosam train")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: the fastest present)")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SonoSAMError as error:
        print(f"sonosam train adapters: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
