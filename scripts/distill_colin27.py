"""Distil the shipped click model (``litemedsam_clicks``) into a smaller TinyViT student on the Colin27 split
it was trained on, and compare student and teacher on the held-out test (docs/training.md, Distillation).

    python -m scripts.distill_colin27 --cache runs/cache --out runs/distill_colin27

Stage 1 (``--warmup-epochs``): embedding distillation on the training part's images (no labels used);
stage 2 (``--epochs``): the mask loss ``(1-a) DiceFocal(student, gt) + a KL(student || teacher_best)`` on the
labelled training samples of the shipped decoder. Prints and writes (``OUT/heldout.md``, ``.json``) the
held-out Dice at 1..5 clicks and with a box, parameter counts and encoder milliseconds per frame (eager,
measured in this process for both models).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    from sonosam.train.distillation import DEFAULT_STUDENT, STUDENTS

    parser = argparse.ArgumentParser(prog="python -m scripts.distill_colin27",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="runs/cache", help="teacher embedding cache (shared with default_decoder)")
    parser.add_argument("--out", default="runs/distill_colin27", help="output folder")
    parser.add_argument("--teacher", default="litemedsam_clicks")
    parser.add_argument("--arch", default=DEFAULT_STUDENT, choices=list(STUDENTS))
    parser.add_argument("--stride", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=16, help="labelled training images (mask stage)")
    parser.add_argument("--warmup-images", type=int, default=None,
                        help="training-part images for the embedding stage (default: all of them)")
    parser.add_argument("--warmup-epochs", type=int, default=3)
    parser.add_argument("--warmup-lr", type=float, default=1e-3)
    parser.add_argument("--warmup-batch", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6, help="mask-loss epochs")
    parser.add_argument("--samples-per-epoch", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--embedding-weight", type=float, default=0.5)
    parser.add_argument("--train-decoder", action="store_true",
                        help="the mask stage also trains the prompt encoder + mask decoder (default: frozen, the "
                             "teacher's)")
    parser.add_argument("--max-corrections", type=int, default=4)
    parser.add_argument("--point-start", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-images", type=int, default=None, help="score on this many test images (default: all)")
    parser.add_argument("--init-row", action="store_true", help="also score the student before training")
    parser.add_argument("--timing-images", type=int, default=3, help="test images for the encoder timing")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    import numpy as np

    from bench.models import _median_ms
    from sonosam.models import load_model
    from sonosam.train.cache import EmbeddingStore
    from sonosam.train.data import summarize, thin_images, unique_images
    from scripts.default_decoder import shipped_split
    from sonosam.train.distillation import DistillConfig, build_student, click_capable, distill
    from sonosam.train.validate import compare_table, difference_table, evaluate_cached

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split, train, _ = shipped_split(args.stride, args.train_images)
    split.test = thin_images(split.test, args.test_images)
    warmup = unique_images(thin_images(split.train, args.warmup_images))
    print(f"embedding stage: {len(warmup)} training-part images", flush=True)
    teacher = load_model(args.teacher, device=args.device)
    store = EmbeddingStore(args.cache, teacher)
    store.precompute(unique_images(split.test))
    students = out / "student_embeddings"   # a student's embeddings are cached per its weights (encoder id)

    def heldout(model, embeddings) -> dict:
        return evaluate_cached(model, embeddings, split.test, n_clicks=5, per_sample=True)

    reference = f"teacher {args.teacher}"
    rows = {reference: heldout(click_capable(teacher), store)}
    if args.init_row:
        untrained = build_student(teacher, args.arch)[0]
        rows["student before training (inherited weights)"] = heldout(untrained, EmbeddingStore(students, untrained))
        print(compare_table(rows), flush=True)
    config = DistillConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, alpha=args.alpha,
                           max_corrections=args.max_corrections, point_start=args.point_start,
                           samples_per_epoch=args.samples_per_epoch, warmup_epochs=args.warmup_epochs,
                           warmup_lr=args.warmup_lr, warmup_batch=args.warmup_batch,
                           embedding_weight=args.embedding_weight, train_decoder=args.train_decoder, seed=args.seed,
                           cache_dir=args.cache)
    data = {"dataset": "Colin27 T1 MRI + AAL labels (Debian mricron-data)", "split": split.rule,
            "train": summarize(train), "warmup_images": len(warmup), "test": summarize(split.test)}
    result = distill(teacher, train, config, arch=args.arch, warmup_images=warmup, output=out / "student.pth",
                     name=f"{args.teacher}_{args.arch}", data_summary=data)
    student = load_model(str(out / "student.pth"), device=args.device)
    rows[f"student {args.arch}"] = heldout(student, EmbeddingStore(students, student))

    images = unique_images(split.test)[:args.timing_images]
    timing = {"teacher": [], "student": []}
    for image in images:   # interleaved, same process: a fair ratio on a shared machine
        for who, model in (("teacher", teacher), ("student", student)):
            model.encode(image)
            timing[who].append(_median_ms(lambda: model.encode(image), 3))
    ms = {who: float(np.median(v)) for who, v in timing.items()}
    params = {"teacher": (result.teacher_parameters, result.teacher_encoder_parameters),
              "student": (result.student_parameters, result.student_encoder_parameters)}
    table = compare_table(rows) + "\n\n" + difference_table(rows, reference)
    lines = [table, "", "| model | parameters | encoder parameters | encoder ms/frame (eager) |", "|---|---|---|---|"]
    lines += [f"| {who} | {params[who][0]:,} | {params[who][1]:,} | {ms[who]:.0f} |" for who in ("teacher", "student")]
    report = "\n".join(lines)
    print(report)
    (out / "heldout.md").write_text(report + "\n")
    (out / "heldout.json").write_text(json.dumps(
        {"rows": rows, "parameters": params, "encoder_ms": ms, "timing_samples_ms": timing, "epochs": result.epochs,
         "seconds": result.seconds, "probe": {"mask_loss": [result.probe_loss_before, result.probe_loss_after],
                                              "embedding_loss": [result.probe_embedding_before,
                                                                 result.probe_embedding_after]},
         "warmup_losses": result.warmup_losses, "losses": result.losses, "config": config.to_dict(),
         "test": summarize(split.test)}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
