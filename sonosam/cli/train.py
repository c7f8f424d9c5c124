"""`sonosam train decoder|distill|adapters`: build domain models (docs/training.md)."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from ..errors import SonoSAMError
from . import check_checkpoint_output, float_in, int_at_least, name_argument


def _data_arguments(parser):
    parser.add_argument("--data", action="append", required=True, metavar="SOURCE",
                        help="labelled images: a folder (images/ + labels/), a list file of 'image,label' lines, "
                             "IMAGE,LABEL, or 'colin27' (the bundled MRI, split by slab and structure); repeatable")
    parser.add_argument("--val-data", action="append", metavar="SOURCE",
                        help="validation sources (default: a split of --data by file/subject)")
    parser.add_argument("--val-fraction", type=float_in(0.0, 1.0, high_open=True), default=0.2, help="share of files for validation")
    parser.add_argument("--labels", type=int_at_least(1), nargs="+", help="label values to use (default: every non-zero one)")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=0, help="slicing axis for volumes")
    parser.add_argument("--min-area", type=int_at_least(1), default=100, help="skip structures smaller than this (pixels)")
    parser.add_argument("--max-images", type=int_at_least(1), help="use at most this many training images (evenly spaced)")
    parser.add_argument("-o", "--output", required=True, help="checkpoint to write (OUT.pth, plus OUT.json)")
    parser.add_argument("--name", type=name_argument, help="model name in the registry (default: the output's file name)")
    parser.add_argument("--cache", default=None, help="embedding cache folder (default: OUTPUT_DIR/embeddings)")
    parser.add_argument("--epochs", type=int_at_least(1), default=100)
    parser.add_argument("--batch-size", type=int_at_least(1), default=8)
    parser.add_argument("--lr", type=float_in(0.0, 1.0, low_open=True), default=1e-4)
    parser.add_argument("--lr-step", type=int_at_least(1), default=25, help="epochs between learning-rate drops")
    parser.add_argument("--lr-gamma", type=float_in(0.0, 1.0, low_open=True), default=0.5, help="learning-rate factor at each drop")
    parser.add_argument("--max-corrections", type=int_at_least(0), default=4, help="corrective clicks simulated per sample: 0..N")
    parser.add_argument("--max-steps", type=int_at_least(1), help="stop after this many optimizer steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT.pth / OUTPUT.json")


def register(subparsers):
    parser = subparsers.add_parser("train", help="fine-tune a decoder, distil a small model, train adapters, "
                                                 "SAM^assist or a prompt predictor")
    sub = parser.add_subparsers(dest="train_command", required=True, metavar="WHAT")

    dec = sub.add_parser("decoder", help="fine-tune the prompt encoder + mask decoder (frozen image encoder)")
    dec.add_argument("--model", default="litemedsam", help="base model (see `sonosam models`) or a trained .pth")
    dec.add_argument("--checkpoint", help="weights file for --model")
    dec.add_argument("--resume", action="store_true", help="continue from OUTPUT.resume")
    dec.add_argument("--no-cache", action="store_true", help="run the encoder every step (benchmarking only)")
    dec.add_argument("--save", choices=("full", "decoder"), default="full",
                     help="full state dict, or only prompt encoder + mask decoder over the base weights")
    dec.add_argument("--val-samples", type=int_at_least(1), default=64, help="validation samples scored after each epoch")
    dec.add_argument("--mask-feedback-p", type=float_in(0, 1), default=1.0,
                     help="probability that a corrective iteration gets the previous logits as mask prompt (1.0)")
    dec.add_argument("--point-start", type=float_in(0, 1), default=0.5, help="share of samples starting with a click (else a box)")
    dec.add_argument("--click-weight", type=float_in(0), default=0.0,
                     help="weight of the cross-entropy under each click: asks the decoder to follow every click (0: off)")
    dec.add_argument("--box-keep", type=float_in(0), default=0.0,
                     help="weight of the KL toward the starting decoder's answer to a box alone (0: off)")
    dec.add_argument("--box-keep-every", action="store_true",
                     help="with --box-keep: keep the answer to a jittered box on every step, not only on box starts")
    _data_arguments(dec)
    dec.set_defaults(func=run_decoder)

    dis = sub.add_parser("distill", help="distil a teacher into a smaller TinyViT student (SonoSAMLite)")
    dis.add_argument("--teacher", required=True, help="teacher: a registered model name or a trained .pth")
    dis.add_argument("--student-arch", default="tinyvit-1121-from-teacher",
                     help="student encoder: tinyvit-1121-from-teacher (default: the teacher's widths, 1/1/2/1 blocks "
                          "taken from its 2/2/6/2; 3.0 M vs 5.7 M), tinyvit-2222-from-teacher (4.5 M), "
                          "tinyvit-xs-random (tiny, random; tests)")
    dis.add_argument("--alpha", type=float_in(0.0, 1.0), default=0.1, help="weight of KL(student || teacher best mask)")
    dis.add_argument("--train-decoder", action="store_true",
                     help="the mask stage also trains the prompt encoder + mask decoder (default: frozen, the "
                          "teacher's)")
    dis.add_argument("--warmup-epochs", type=int_at_least(0), default=3,
                     help="epochs of embedding distillation (student encoder vs the teacher's cached embeddings) "
                          "before the mask loss; 0: none")
    dis.add_argument("--warmup-lr", type=float_in(0.0, 1.0, low_open=True), default=1e-3, help="learning rate of the embedding stage")
    dis.add_argument("--embedding-weight", type=float_in(0.0), default=0.5,
                     help="weight of the embedding loss added to the mask loss in the main stage")
    dis.add_argument("--point-start", type=float_in(0.0, 1.0), default=0.5,
                     help="probability that a sample starts with a click (else a loose box)")
    _data_arguments(dis)
    dis.set_defaults(func=run_distill, batch_size=4)

    _register_adapters(sub)
    from .seeds import register_train

    register_train(sub)   # assist, ppn


def _register_adapters(sub):
    """`train adapters`: the adapters module's own command line (sonosam.adapters), when it provides one."""
    for module_name in ("sonosam.adapters.cli", "sonosam.adapters"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, "register") and hasattr(module, "run"):
            module.register(sub)   # adds the "adapters" parser with func=run
            return
    adapters = sub.add_parser("adapters", help="train Med-SA adapters (not available in this installation)")
    adapters.set_defaults(func=lambda args: (_ for _ in ()).throw(
        SonoSAMError("adapter training has no command line in this installation; use sonosam.adapters from Python")))


def _load_data(args):
    from ..evaluate.datasets import load_samples
    from ..train.data import Split, colin27_split, split_by_source, thin_images

    def load(sources):
        out = []
        for source in sources:
            if source == "colin27":
                raise SonoSAMError("'colin27' must be the only --data source")
            if "," in source and not Path(source).exists():
                source = tuple(source.split(",", 1))
            out.extend(load_samples(source, labels=args.labels, axis=args.axis, min_area=args.min_area))
        return out

    if args.data == ["colin27"]:
        split = colin27_split(min_area=max(args.min_area, 150))
    else:
        samples = load(args.data)
        split = Split(samples, load(args.val_data), [], "given validation sources") if args.val_data else \
            split_by_source(samples, args.val_fraction, args.seed)
    split.train = thin_images(split.train, args.max_images)
    return split


def _cache_dir(args) -> str:
    return args.cache or str(Path(args.output).resolve().parent / "embeddings")


def _model_files(*names) -> list[str]:
    """The files behind models named by --model/--teacher/--checkpoint (a path, or a registered model's weights and
    JSON): an output may never replace one of them."""
    from ..models import get_spec, weights_path

    files = []
    for name in filter(None, names):
        if Path(name).is_file():
            files += [name, str(Path(name).with_suffix(".json"))]
            continue
        try:
            spec = get_spec(name)
        except SonoSAMError:
            continue   # load_model names the problem
        for file in (weights_path(spec), spec.overlay and spec.overlay()):
            if file:
                files += [str(file), str(Path(file).with_suffix(".json"))]
    return files


def run_decoder(args):
    check_checkpoint_output(args, resume=args.resume, inputs=_model_files(args.model, args.checkpoint))
    from ..models import load_model
    from ..train import TrainConfig, train_decoder
    from ..train.finetune import check_decoder_run

    model = load_model(args.model, checkpoint=args.checkpoint, device=getattr(args, "device", None))
    check_decoder_run(model, args.output, args.name, args.save)   # before the data are read
    split = _load_data(args)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_step=args.lr_step,
                         lr_gamma=args.lr_gamma, max_corrections=args.max_corrections, seed=args.seed,
                         amp=not args.no_amp, max_steps=args.max_steps, cache_dir=_cache_dir(args),
                         use_cache=not args.no_cache, progress=not args.quiet, val_samples=args.val_samples,
                         mask_feedback_p=args.mask_feedback_p, point_start=args.point_start,
                         click_weight=args.click_weight, box_keep=args.box_keep,
                         box_keep_every=args.box_keep_every)
    result = train_decoder(model, split.train, split.val, config, args.output, resume=args.resume, name=args.name,
                           data_summary=split.summary(), save_weights=args.save)
    if result.best is None or result.checkpoint is None:
        raise SonoSAMError("No epoch finished with a validation score; nothing was saved.")
    print(f"best epoch {result.best['epoch']}: validation {json.dumps(result.best.get('val'))}")
    print(f"{'wrote' if result.epochs_run else 'the run had already finished: its checkpoint is'} {result.checkpoint} and "
          f"{result.metadata}; use it with --model {result.checkpoint}")
    return 0


def run_distill(args):
    check_checkpoint_output(args, inputs=_model_files(args.teacher))
    from ..models import load_model
    from ..train.checkpoint import checkpoint_name
    from ..train.distillation import DistillConfig, distill

    checkpoint_name(args.output, args.name)
    teacher = load_model(args.teacher, device=getattr(args, "device", None))
    split = _load_data(args)
    config = DistillConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_step=args.lr_step,
                           lr_gamma=args.lr_gamma, alpha=args.alpha, max_corrections=args.max_corrections,
                           seed=args.seed, amp=not args.no_amp, max_steps=args.max_steps, cache_dir=_cache_dir(args),
                           progress=not args.quiet, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
                           embedding_weight=args.embedding_weight, point_start=args.point_start,
                           train_decoder=args.train_decoder)
    result = distill(teacher, split.train, config, arch=args.student_arch, output=args.output, name=args.name,
                     data_summary=split.summary())
    print(f"teacher parameters {result.teacher_parameters:,}; student parameters {result.student_parameters:,}")
    if split.val:
        from ..train.cache import EmbeddingStore
        from ..train.distillation import click_capable
        from ..train.validate import compare_table, evaluate_cached

        student = load_model(str(result.checkpoint[0]), device=getattr(args, "device", None))
        held = split.test or split.val[:64]
        print(f"held-out Dice on the {'test' if split.test else 'validation'} samples ({len(held)}):")
        rows = {"teacher": evaluate_cached(click_capable(teacher), EmbeddingStore(_cache_dir(args), teacher), held),
                "student": evaluate_cached(student, EmbeddingStore(_cache_dir(args), student), held)}
        print(compare_table(rows))
    print(f"wrote {result.checkpoint[0]} and {result.checkpoint[1]}")
    return 0

