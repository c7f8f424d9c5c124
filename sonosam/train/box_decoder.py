"""Train ``litemedsam_boxes``: the shipped click decoder fine-tuned on loose boxes alone, for users who work from
boxes (issue 14; docs/training.md, "litemedsam_boxes: an opt-in model for box sessions").

    python -m sonosam.train.box_decoder --cache runs/cache --out runs/boxes [--ship]

Warm start from ``litemedsam_clicks``' prompt encoder + mask decoder; every prompt is a loose box around a
structure of the four ``click_data`` sources' training parts (at the click decoder's shares), no corrections and no
mask feedback; BCE + soft Dice on the low-res logits (+ the IoU head's error), Adam, a fixed number of steps (the
last step is kept: the recipe was chosen on the validation parts, docs/training.md). Writes OUT/litemedsam_boxes.pth
+ .json in the product's format (fp16 decoder overlay, the box answered at litemedsam_clicks' scales); ``--ship``
copies them into sonosam/weights.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

NAME = "litemedsam_boxes"
START = "litemedsam_clicks"
STEPS_PER_EPOCH = 20   # epochs only pace the draws (each draws STEPS_PER_EPOCH batches); nothing is chosen per epoch


def recipe(steps: int = 200, batch_size: int = 8, lr: float = 1e-4, box_jitter: float = 0.1, seed: int = 0,
           cache_dir: str | None = None):
    """The TrainConfig of the shipped model: ``steps`` optimizer steps of ``batch_size`` loose boxes."""
    from .finetune import TrainConfig

    return TrainConfig(epochs=-(-steps // STEPS_PER_EPOCH), batch_size=batch_size, lr=lr, lr_step=10 ** 6,
                       max_corrections=0, point_start=0.0, box_jitter=box_jitter, mask_feedback=False,
                       mask_loss="bce_dice", samples_per_epoch=STEPS_PER_EPOCH * batch_size, val_samples=0,
                       max_steps=steps, seed=seed, cache_dir=cache_dir)


def train_box_decoder(train, sample_weights, config, start: str = START):
    """``start``'s model with its prompt encoder + mask decoder trained by ``config`` on ``train`` (in place)."""
    from ..models import load_model
    from .finetune import train_decoder

    model = load_model(start)
    model.sam.float()
    result = train_decoder(model, train, [], config, sample_weights=sample_weights, log=print)
    return model, result


def main(argv=None) -> int:
    from .click_decoder import SHARES, parse_shares

    parser = argparse.ArgumentParser(prog="python -m sonosam.train.box_decoder", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="runs/cache", help="embedding cache folder (reused across runs)")
    parser.add_argument("--out", default="runs/boxes")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--box-jitter", type=float, default=0.1, help="each side moved by up to this share of the box")
    parser.add_argument("--shares", type=parse_shares, default=dict(SHARES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ship", action="store_true", help="copy the result into sonosam/weights")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    from ..models import get_spec
    from .checkpoint import save_checkpoint
    from .click_data import build_sources
    from .data import summarize

    train, weights, data = [], [], {}
    for name, source in build_sources().items():
        part = source.split.train
        train += part
        weights += [args.shares[name] / len(part)] * len(part)
        data[name] = {"split": source.split.rule, "train": summarize(part)}
    config = recipe(args.steps, lr=args.lr, box_jitter=args.box_jitter, seed=args.seed, cache_dir=args.cache)
    began = time.perf_counter()
    model, result = train_box_decoder(train, weights, config)
    seconds = time.perf_counter() - began
    print(f"trained {result.steps} steps in {seconds:.0f} s", flush=True)
    out = Path(args.out)
    pth, meta = save_checkpoint(
        model, out / f"{NAME}.pth", name=NAME, weights="decoder", dtype="float16", base_model="litemedsam",
        box_scales=get_spec(START).box_scales, box_sessions_of=START,
        training={"start": START, "steps": result.steps, "seconds": round(seconds), "config": config.to_dict(),
                  "data": data, "command": "python -m sonosam.train.box_decoder " + " ".join(argv)},
        description=f"{START} with a second prompt encoder + mask decoder, fine-tuned on loose boxes alone (BCE + "
                    "soft Dice), for box sessions (a box and the clicks that correct it); clicks alone, propagation "
                    f"and tracking as {START}; points and boxes")
    print("wrote", pth, meta, flush=True)
    if args.ship:
        shipped = Path(__file__).resolve().parent.parent / "weights"
        for file in (pth, meta):
            shutil.copy2(file, shipped / file.name)
        print("shipped into", shipped)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
