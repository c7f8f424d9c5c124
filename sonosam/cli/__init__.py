"""`sonosam` command line: one module per subcommand, each with `register(subparsers)` that sets
`func=run` on its parser. Errors the user can fix are printed as one line, exit code 2."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import SonoSAMError

# Subcommand modules in sonosam/cli/ (the order is the order of `sonosam --help`).
COMMANDS = ["segment", "propagate", "track", "evaluate", "train", "models", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sonosam", description=__import__("sonosam").__doc__.splitlines()[0])
    parser.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: the fastest present)")
    parser.add_argument("--backend", default="auto",
                        help="inference engine: auto (default: ONNX Runtime on CPU, PyTorch on GPU), eager, onnx, "
                             "onnx-decoder, eager-fp16, eager-bf16")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except SonoSAMError as error:
        print(f"sonosam {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def load_model_from_args(args, name: str | None = None, checkpoint=None):
    """The model an inference command asked for, on the chosen device and backend."""
    from ..models import load_model

    return load_model(name or args.model, checkpoint=checkpoint or getattr(args, "checkpoint", None),
                      device=getattr(args, "device", None), backend=getattr(args, "backend", None))


def parse_point(text: str) -> tuple[float, float, int]:
    """"x,y" or "x,y,label" (label 1 = foreground, 0 = background)."""
    parts = text.split(",")
    try:
        if len(parts) in (2, 3):
            x, y = float(parts[0]), float(parts[1])
            label = int(parts[2]) if len(parts) == 3 else 1
            if label in (0, 1):
                return x, y, label
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"point {text!r} must be x,y or x,y,label with label 0 or 1")


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
        if len(values) == 4:
            return values
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"box {text!r} must be x0,y0,x1,y1")


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """--point/--box/--model, shared by segment, propagate and track."""
    parser.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y[,LABEL]",
                        help="a click in pixel coordinates (x = column, y = row); label 1 (default) or 0; repeatable")
    parser.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="a box in pixel coordinates")
    parser.add_argument("--model", default="litemedsam", help="model name (see `sonosam models`)")
    parser.add_argument("--checkpoint", help="weights file for --model (default: bundled or cached)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def split_points(points):
    """[(x, y, label), ...] -> (xy list or None, labels or None)."""
    if not points:
        return None, None
    return [(x, y) for x, y, _ in points], [label for _, _, label in points]
