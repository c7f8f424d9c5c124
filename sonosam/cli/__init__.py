"""`sonosam` command line: one module per subcommand, each with `register(subparsers)` that sets
`func=run` on its parser. Errors the user can fix are printed as one line, exit code 2.

Fail fast: options are checked when they are parsed (numbers finite and in range, names safe for file
headers, device and backend spelled right), and each command checks its inputs, outputs and prompts before
it imports torch or loads a model."""

from __future__ import annotations

import argparse
import importlib
import math
import signal
import sys
from pathlib import Path

from ..errors import PromptError, SonoSAMError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, then where to look), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(minimum: int, maximum: int | None = None):
    """argparse type: an integer >= minimum (and <= maximum, when given)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}; got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}; got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_in(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False):
    """argparse type: a finite float in [low, high] (open ends where asked)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number; got {text}")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"must be {'above' if low_open else 'at least'} {low}; got {value:g}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"must be {'below' if high_open else 'at most'} {high}; got {value:g}")
        return value
    parse.__name__ = "number"
    return parse


def name_argument(text: str) -> str:
    """argparse type: a segment/object name that is safe in a file header (sonosam.io.check_name)."""
    from ..io.segmentations import check_name

    try:
        return check_name(text, "name")
    except SonoSAMError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def device_argument(text: str) -> str:
    from ..devices import check_device_name

    try:
        return check_device_name(text)
    except SonoSAMError as error:
        raise argparse.ArgumentTypeError(str(error)) from None

# Subcommand modules in sonosam/cli/ (the order is the order of `sonosam --help`).
COMMANDS = ["segment", "propagate", "track", "evaluate", "train", "models", "serve", "seeds"]


def build_parser() -> argparse.ArgumentParser:
    from ..devices import BACKENDS

    parser = OneLineParser(prog="sonosam", description=__import__("sonosam").__doc__.splitlines()[0])
    parser.add_argument("--device", type=device_argument, help="cpu, cuda, cuda:1 or mps (default: the fastest present)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="inference engine: auto (default: ONNX Runtime on CPU, PyTorch on GPU), eager, onnx, "
                             "onnx-decoder, eager-fp16, eager-bf16")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python next runs (after a long C call returns), so that the cleanup of Ctrl-C runs."""


def _terminate(signum, frame):
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = None
    if args.command != "serve":   # uvicorn handles the server's signals itself (a graceful shutdown)
        try:   # `kill` (SIGTERM) cleans up like Ctrl-C: temp files and half-written output sets are removed
            previous = signal.signal(signal.SIGTERM, _terminate) or signal.SIG_DFL
        except ValueError:   # not the main thread: the caller handles its signals
            pass
    try:
        return args.func(args) or 0
    except SonoSAMError as error:
        print(f"sonosam {args.command}: error: {error}", file=sys.stderr)
        return 2
    except _Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"sonosam {args.command}: error: out of memory; use a smaller input (crop, fewer frames) or a "
              f"machine with more memory.", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def load_model_from_args(args, name: str | None = None, checkpoint=None):
    """The model an inference command asked for, on the chosen device and backend (the device checked first,
    so a machine without CUDA says so before any weights are read)."""
    from ..devices import resolve_device
    from ..models import load_model

    resolve_device(getattr(args, "device", None))
    return load_model(name or args.model, checkpoint=checkpoint or getattr(args, "checkpoint", None),
                      device=getattr(args, "device", None), backend=getattr(args, "backend", None))


def check_checkpoint_output(args, resume: bool = False, inputs=(), metadata: bool = True) -> None:
    """OUT.pth and OUT.json (``metadata``) are never replaced without --overwrite, nor an input ever (a resumed
    run continues its own output, when its OUT.pth.resume is there); checked before the data are read or a model
    loaded."""
    from ..io import check_output_path

    output = Path(args.output)
    if output.suffix.lower() not in (".pth", ".pt"):
        raise SonoSAMError(f"The checkpoint {output} must end with .pth (its metadata goes to {output.stem}.json)."
                           if metadata else f"The prompt predictor {output} must end with .pt (e.g. OUT.ppn.pt).")
    resume = resume and output.with_name(output.name + ".resume").exists()
    for path in (output, output.with_suffix(".json")) if metadata else (output,):
        check_output_path(path, args.overwrite or resume, inputs=inputs, parents=True)


def parse_point(text: str) -> tuple[float, float, int]:
    """"x,y" or "x,y,label" (label 1 = foreground, 0 = background), finite pixel coordinates."""
    parts = text.split(",")
    try:
        if len(parts) in (2, 3):
            x, y = float(parts[0]), float(parts[1])
            label = int(parts[2]) if len(parts) == 3 else 1
            if label in (0, 1) and math.isfinite(x) and math.isfinite(y):
                return x, y, label
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"point {text!r} must be x,y or x,y,label with finite x, y and label 0 or 1")


def parse_box(text: str) -> tuple[float, float, float, float]:
    """"x0,y0,x1,y1": finite pixel coordinates with x0 < x1 and y0 < y1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"box {text!r} must be x0,y0,x1,y1 (four finite numbers)")
    if not (values[0] < values[2] and values[1] < values[3]):
        raise argparse.ArgumentTypeError(f"box {text!r} must have x0 < x1 and y0 < y1 (left, top, right, bottom)")
    return values


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """--point/--box/--model, shared by segment, propagate and track."""
    parser.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y[,LABEL]",
                        help="a click in pixel coordinates (x = column, y = row); label 1 (default) or 0; repeatable")
    parser.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="a box in pixel coordinates")
    parser.add_argument("--model", default="litemedsam", help="model name (see `sonosam models`; default: %(default)s)")
    parser.add_argument("--checkpoint", help="weights file for --model (default: bundled or cached)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def seed_choice(check, choice: int, prompt: str = "prompt"):
    """Candidate `choice` of a seed check (`--seed-choice N`), or a PromptError that lists what the check offers."""
    if choice >= len(check.candidates):
        raise PromptError(f"--seed-choice {choice}: the seed check offers {len(check.candidates)} masks for this "
                          f"{prompt} ({check.listing()}).")
    return check.candidates[choice]


def check_prompts_inside(points, labels, box, width: int, height: int) -> None:
    """Prompts checked against the image before a model is loaded (the core's rule, sonosam.prompts)."""
    from ..prompts import Prompts

    Prompts(points=points, labels=labels, box=box).check_inside(width, height)


def split_points(points):
    """[(x, y, label), ...] -> (xy list or None, labels or None)."""
    if not points:
        return None, None
    return [(x, y) for x, y, _ in points], [label for _, _, label in points]
