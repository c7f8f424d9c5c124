"""Build the click-capable default decoder for LiteMedSAM (``litemedsam_clicks``) with the fine-tuning
pipeline, compare it with the base model on held-out data, and ship it only if it wins.

    python -m scripts.default_decoder --cache runs/cache --out runs/litemedsam_clicks [--ship]

Data: real Colin27 T1 MRI slices with AAL labels (``colin27_split``: held out by slab and structure).
Rule (issue 7): ship if on the held-out test samples it beats the base LiteMedSAM at 1, 3 and 5 clicks
(the base decoder run with clicks as they are) and loses no more than 1 Dice point with a box.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

SHIPPED_NAME = "litemedsam_clicks"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.default_decoder", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="runs/cache", help="embedding cache folder")
    parser.add_argument("--out", default="runs/litemedsam_clicks", help="output folder")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=16)
    parser.add_argument("--val-images", type=int, default=5)
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples-per-epoch", type=int, default=40, help="random training samples per epoch")
    parser.add_argument("--max-corrections", type=int, default=2)
    parser.add_argument("--val-samples", type=int, default=16)
    parser.add_argument("--val-clicks", type=int, default=3, help="clicks in the per-epoch validation")
    parser.add_argument("--point-start", type=float, default=0.5,
                        help="probability that a training sample starts with a click (else a loose box)")
    parser.add_argument("--no-mask-feedback", dest="mask_feedback", action="store_false",
                        help="train without feeding the previous logits back; the model is then declared "
                             "without mask prompts (points and boxes only)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--ship", action="store_true", help="copy into sonosam/weights if it passes the rule")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    from sonosam.models import load_model
    from sonosam.train.cache import EmbeddingStore
    from sonosam.train.checkpoint import save_checkpoint
    from sonosam.train.data import summarize
    from sonosam.train.finetune import TrainConfig, clickable, train_decoder
    from sonosam.train.validate import compare_table, evaluate_cached

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split, train, val = shipped_split(args.stride, args.train_images, args.val_images)

    model = load_model("litemedsam", device=args.device)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, cache_dir=args.cache,
                         val_samples=args.val_samples, seed=args.seed, samples_per_epoch=args.samples_per_epoch,
                         max_corrections=args.max_corrections, val_clicks=args.val_clicks,
                         point_start=args.point_start, mask_feedback=args.mask_feedback, lr=args.lr)
    data = {"dataset": "Colin27 T1 MRI + AAL labels (Debian mricron-data)", "split": split.rule,
            "train": summarize(train), "val": summarize(val), "test": summarize(split.test)}
    result = train_decoder(model, train, val, config, out / "decoder.pth", name=SHIPPED_NAME + "_run",
                           data_summary=data, resume=True)
    print(json.dumps(result.epochs, indent=1, default=str), flush=True)

    # held-out comparison: base LiteMedSAM (its decoder given the clicks as they are) vs the best checkpoint
    base = clickable(load_model("litemedsam", device=args.device))
    tuned = clickable(load_model(str(out / "decoder.pth"), device=args.device), mask=args.mask_feedback)
    store = EmbeddingStore(args.cache, base)
    rows = {"litemedsam (base)": base_heldout(base, store, split.test, out / "base_heldout.json"),
            "fine-tuned": evaluate_cached(tuned, store, split.test, n_clicks=5, progress=True)}
    b, t = rows["litemedsam (base)"], rows["fine-tuned"]
    passed = all(t[f"dice@{k}"] > b[f"dice@{k}"] for k in (1, 3, 5)) and t["box"] >= b["box"] - 0.01
    table = compare_table(rows)
    print(table)
    print("ship rule:", "PASSED" if passed else "FAILED")
    (out / "heldout.json").write_text(json.dumps({"rows": rows, "passed": passed, "test": summarize(split.test)},
                                                 indent=1) + "\n")
    (out / "heldout.md").write_text(table + f"\n\nship rule {'passed' if passed else 'failed'}\n")
    if passed:
        shipped_dir = out / "ship"
        shipped_dir.mkdir(exist_ok=True)
        training = json.loads((out / "decoder.json").read_text())["training"]
        training["heldout_test"] = rows
        pth, meta = save_checkpoint(tuned, shipped_dir / f"{SHIPPED_NAME}.pth", name=SHIPPED_NAME, weights="decoder",
                                    dtype="float16", base_model="litemedsam", training=training,
                                    description="LiteMedSAM with a click-trained prompt encoder + mask decoder "
                                                "(sonosam train, Colin27 MRI); points, boxes"
                                                + (" and masks" if args.mask_feedback else
                                                   " (trained without mask-prompt feedback: none is passed)"))
        print("wrote", pth, meta)
        if args.ship:
            target = Path(__file__).resolve().parent.parent / "sonosam" / "weights"
            target.mkdir(exist_ok=True)
            for file in (pth, meta):
                shutil.copy2(file, target / file.name)
            print("shipped into", target)
    return 0 if passed else 1


def shipped_split(stride: int = 3, train_images: int = 16, val_images: int = 5):
    """The Colin27 split ``litemedsam_clicks`` was trained on: (split, training samples of
    ``train_images`` images, validation samples of ``val_images`` images); the test is ``split.test``."""
    from sonosam.train.data import colin27_split, thin_images

    split = colin27_split(stride=stride)
    train, val = thin_images(split.train, train_images), thin_images(split.val, val_images)
    print(split.rule)
    print(f"train {len(train)} samples / {len({s.key for s in train})} images; val {len(val)}; "
          f"test {len(split.test)} samples / {len({s.key for s in split.test})} images", flush=True)
    return split, train, val


def base_heldout(base, store, test, path: Path) -> dict:
    """The base model's held-out Dice (reused from ``path`` when it was computed on the same test set)."""
    from sonosam.train.data import summarize
    from sonosam.train.validate import evaluate_cached

    summary = json.loads(json.dumps(summarize(test)))   # as it reads back from the file (string keys)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("test") == summary:
            return saved["metrics"]
    metrics = evaluate_cached(base, store, test, n_clicks=5, progress=True)
    path.write_text(json.dumps({"test": summary, "metrics": metrics}, indent=1) + "\n")
    return metrics


if __name__ == "__main__":
    raise SystemExit(main())
