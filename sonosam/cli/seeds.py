"""`sonosam refine`, `sonosam train assist|ppn` and `sonosam segment --auto`: the seed papers' modes that
remove or reduce clicks (sonosam.refine, sonosam.assist, sonosam.ppn; docs/seeds.md)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import DataFileError, SonoSAMError
from . import check_checkpoint_output, float_in, int_at_least, load_model_from_args


def register(subparsers):
    parser = subparsers.add_parser(
        "refine", help="refine a coarse probability map into a mask (zero-shot, no clicks)",
        description="Refine a coarse probability map (0..1, or a 0..255 integer picture) of one structure on one 2D "
                    "frame or slice: positive points by k-medoids on the thresholded map, negatives optimised on the "
                    "context minus the map, then the frozen model (docs/seeds.md). A map given as a volume is read "
                    "where it lies in space (resampled onto the image volume's grid), then sliced like the image.")
    parser.add_argument("image", type=Path)
    parser.add_argument("--coarse", type=Path, required=True, help="probability map: floats 0..1 (up to 1.05 is clipped) or a 0..255 integer picture")
    parser.add_argument("--context", type=Path, help="mask of the anatomy around the structure (default: a ring)")
    parser.add_argument("--frame", "--slice", dest="index", type=int_at_least(0), default=0)
    parser.add_argument("--axis", default="k", choices=["k", "j", "i"])
    parser.add_argument("--model", default="litemedsam_clicks", help="a click-capable model (default litemedsam_clicks)")
    parser.add_argument("--checkpoint")
    parser.add_argument("--seed", type=int_at_least(0), default=0)
    parser.add_argument("--steps", type=int_at_least(1), default=100, help="AdamW steps for the negatives (early stop)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(func=run_refine)


def _map_like(path: Path, image: np.ndarray, volume, geometry, index: int, axis: str, what: str) -> np.ndarray:
    """A 2D map for the image: the file itself (2D), or its slice where it lies in space (a volume: on the image
    volume's grid by sonosam.io.labels_on_grid, the rule evaluate and the train commands use)."""
    from ..image import take_slice
    from ..io import Volume, labels_on_grid, read_image

    loaded = read_image(path)
    array = np.asarray(loaded.array)
    if loaded.kind == "volume" and array.ndim - loaded.vector == 3 and array.shape[0] == 1:
        array = array[0]   # a 2D map stored as a one-slice volume
    if array.ndim == 3 and not loaded.vector and volume is not None:
        if loaded.geometry is not None and geometry is not None:
            array = labels_on_grid(Volume(array, loaded.geometry), volume.shape, geometry, f"{what} {path}")
        if array.shape == volume.shape:
            array = take_slice(array, axis, index)
    if loaded.vector and array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., 0]
    if array.shape != image.shape[:2]:
        raise DataFileError(f"{what} {path} is {array.shape} but the image is {image.shape[:2]}; give it on the same grid.")
    return array


def _write(args, overlay, image, volume, geometry, display, mask, points, labels, box=None, name="Segment_1"):
    from ..image import axis_index
    from ..io import Geometry, output_set, save_overlay_png, write_segmentation

    full = mask
    if volume is not None:
        full = np.zeros(volume.shape, dtype=bool)
        np.moveaxis(full, axis_index(args.axis), 0)[args.index or 0] = mask
    elif not args.output.name.lower().endswith(".png"):
        full = mask[np.newaxis]
    with output_set([args.output, overlay], folder=args.output.parent):   # both files or neither
        write_segmentation(args.output, full, geometry or Geometry(), [{"name": name, "color": (0.85, 0.3, 0.3)}],
                           overwrite=args.overwrite)
        save_overlay_png(overlay, display, [mask], points=points, labels=labels, box=box, overwrite=args.overwrite)


def run_refine(args):
    from ..refine import check_clicks, coarse_probabilities, refine
    from .images import check_mask_format, load_image, mask_outputs

    overlay = mask_outputs(args.output, args.overwrite, (args.image, args.coarse, args.context))
    image, volume, geometry, display = load_image(args.image, args.index, args.axis)
    check_mask_format(args.output, volume, args.image)
    coarse = coarse_probabilities(_map_like(args.coarse, image, volume, geometry, args.index, args.axis, "Coarse map"),
                                  f"Coarse map {args.coarse}")
    context = None if args.context is None else \
        _map_like(args.context, image, volume, geometry, args.index, args.axis, "Context mask") > 0
    model = load_model_from_args(args)
    check_clicks(model)
    began = time.perf_counter()
    result = refine(model, image, coarse, context=context, seed=args.seed, steps=args.steps)
    points = np.concatenate([result.positives, result.negatives])
    labels = [1] * len(result.positives) + [0] * len(result.negatives)
    _write(args, overlay, image, volume, geometry, display, result.mask, points, labels)
    print(f"positives (k={result.k}): {np.round(result.positives).astype(int).tolist()}")
    print(f"negatives ({len(result.losses)} steps): {np.round(result.negatives).astype(int).tolist()}")
    print(f"mask: {args.output} ({int(result.mask.sum())} pixels, predicted IoU {result.score:.3f})")
    print(f"overlay: {overlay}")
    print(f"time: {time.perf_counter() - began:.1f} s on {model.device}")
    return 0


# --- sonosam train assist / ppn --------------------------------------------------------------------------

def _parse_slices(text: str) -> list[int]:
    from ..assist import check_slices

    try:
        slices = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SonoSAMError(f"--slices {text!r} must be comma-separated slice numbers, e.g. 40,52,64") from None
    try:
        return check_slices(slices)
    except SonoSAMError as error:
        raise SonoSAMError(f"--slices {text}: {error}") from None


def register_train(sub):
    assist = sub.add_parser("assist", help="SAM^assist: learn the prompt encoder from 2-5 annotated slices",
                            description="Learn only the prompt encoder from a few annotated slices of the volume "
                                        "being segmented (seconds to minutes on a CPU); use the result with "
                                        "`--model OUT.pth` for the other slices.")
    assist.add_argument("volume", type=Path)
    assist.add_argument("--labels", type=Path, required=True, help="label map on the volume's grid")
    assist.add_argument("--label", type=int, default=1, help="label value of the structure (default 1)")
    assist.add_argument("--slices", required=True, help="the annotated slices, e.g. 40,52,64 (2-5 of them)")
    assist.add_argument("--axis", default="k", choices=["k", "j", "i"])
    assist.add_argument("--model", default="litemedsam")
    assist.add_argument("--checkpoint")
    assist.add_argument("--kinds", default="box,point", help="prompt kinds to learn: box, point or box,point")
    assist.add_argument("--steps", type=int_at_least(1), default=30)
    assist.add_argument("--seed", type=int_at_least(0), default=0)
    assist.add_argument("-o", "--output", required=True, help="OUT.pth (+ OUT.json), loadable with --model OUT.pth")
    assist.add_argument("--overwrite", action="store_true", help="replace an existing OUT.pth / OUT.json")
    assist.set_defaults(func=run_train_assist)

    ppn = sub.add_parser("ppn", help="Sam2Rad prompt predictor: segment a class with no clicks",
                         description="Train a prompt predictor (learned box, mask prompt and prompt embeddings per "
                                     "class, objectness) over the frozen model, on labelled slices.")
    ppn.add_argument("--data", action="append", required=True, metavar="VOLUME,LABELS",
                     help="a volume and its label map (repeatable; each is one subject or loop), or 'colin27' (the "
                          "bundled MRI: its training slabs, and its validation slabs for validation)")
    ppn.add_argument("--val-data", action="append", default=[], metavar="VOLUME,LABELS",
                     help="a validation volume (repeatable); default: --val-fraction of the --data volumes, whole "
                          "volumes, never slices of a training volume")
    ppn.add_argument("--val-fraction", type=float, default=0.2,
                     help="share of the --data volumes held out for validation (at least one of two or more; "
                          "0: none; default 0.2)")
    ppn.add_argument("--validate-every", type=int, help="steps between validations (default: steps / 10)")
    ppn.add_argument("--class", dest="classes", action="append", required=True, metavar="NAME[=VALUE]",
                     help="class name and label value (AAL names, White_Matter_L/R and Lateral_Ventricle_L/R need no "
                          "value with colin27); repeatable")
    ppn.add_argument("--axis", default="k", choices=["k", "j", "i"])
    ppn.add_argument("--stride", type=int_at_least(1), default=1, help="use every n-th slice")
    ppn.add_argument("--model", default="litemedsam")
    ppn.add_argument("--checkpoint")
    ppn.add_argument("--steps", type=int_at_least(1), default=150)
    ppn.add_argument("--batch-size", type=int_at_least(1), default=4)
    ppn.add_argument("--lr", type=float_in(0.0, 1.0, low_open=True), default=1e-3)
    ppn.add_argument("--seed", type=int_at_least(0), default=0)
    ppn.add_argument("--cache", help="embedding cache folder (default: OUTPUT_DIR/embeddings)")
    ppn.add_argument("-o", "--output", required=True, help="OUT.ppn.pt")
    ppn.add_argument("--overwrite", action="store_true", help="replace an existing OUT.ppn.pt")
    ppn.set_defaults(func=run_train_ppn)


def run_train_assist(args):
    from ..assist import check_kinds, save_assist, train_assist
    from ..image import take_slice
    from ..io import read_labels, read_volume

    check_checkpoint_output(args, inputs=(args.volume, args.labels))
    slices = _parse_slices(args.slices)
    try:
        kinds = check_kinds(args.kinds.split(","))
    except SonoSAMError as error:
        raise SonoSAMError(f"--kinds {args.kinds}: {error}") from None
    volume = read_volume(args.volume)
    labels, volume = read_labels(args.labels, volume), volume.array
    images = [take_slice(volume, args.axis, i) for i in slices]
    masks = [take_slice(labels, args.axis, i) == args.label for i in slices]
    model = load_model_from_args(args)
    from ..volume import volume_window

    result = train_assist(model, images, masks, kinds=kinds, steps=args.steps, seed=args.seed,
                          window=volume_window(volume))
    path, meta = save_assist(result, args.output, overwrite=args.overwrite)
    print(f"trained {result.trained_parameters} prompt-encoder parameters on {len(slices)} slices in "
          f"{result.seconds:.1f} s (+ {result.encode_seconds:.1f} s encoding); loss {result.losses[0]:.3f} -> "
          f"{np.mean(result.losses[-5:]):.3f}")
    print(f"wrote {path} and {meta}; use it with --model {path}")
    return 0


def _ppn_classes(args) -> dict[str, int]:
    """--class NAME=VALUE (or a Colin27 name alone, with --data colin27) -> {name: label value}."""
    classes: dict[str, int] = {}
    names = None
    for text in args.classes:
        name, _, value = text.partition("=")
        if not value:
            from ..data import aal_label_names
            from ..train.click_data import TISSUE_LABELS

            if names is None:
                names = {v: k for k, v in {**aal_label_names(), **TISSUE_LABELS}.items()}
            if name not in names or "colin27" not in args.data:
                where = "" if name not in names else " (names alone are Colin27's labels, for --data colin27)"
                raise SonoSAMError(f"--class {name}: give NAME=VALUE, the label value of {name} in the label "
                                   f"maps{where}.")
            value = names[name]
        try:
            classes[name] = int(value)
        except ValueError:
            raise SonoSAMError(f"--class {text}: the value must be a whole number (the class's label value), "
                               f"e.g. {name}=1.") from None
    return classes


def _ppn_volume(source: str, args, part: str = "train"):
    """(images, label maps) of one --data/--val-data source: every --stride-th slice along --axis; 'colin27': its
    ``part`` slabs (sonosam.seeds_data.ppn_split)."""
    from ..image import axis_index, take_slice
    from ..io import read_labels, read_volume

    if source == "colin27":
        from ..seeds_data import ppn_labels, ppn_split


        volume, labels = ppn_labels()
        picks = ppn_split(stride=args.stride)[part]
        return [volume[i] for i in picks], [labels[i] for i in picks]
    if "," not in source:
        raise SonoSAMError(f"--data {source!r} must be VOLUME,LABELS or colin27.")
    image_path, label_path = source.split(",", 1)
    volume = read_volume(image_path)
    volume, labels = volume.array, read_labels(label_path, volume)
    picks = range(0, volume.shape[axis_index(args.axis)], args.stride)
    return [take_slice(volume, args.axis, i) for i in picks], [take_slice(labels, args.axis, i) for i in picks]


def _ppn_split(args) -> tuple[list[str], list[str], str]:
    """Training and validation sources, split by whole volume (sonosam.ppn.split_volumes), and a line saying how."""
    from ..ppn import split_volumes

    if args.val_data:
        shared = set(args.val_data) & set(args.data)
        if shared:
            raise SonoSAMError(f"{sorted(shared)[0]} is given both as --data and as --val-data; validate on other "
                               "volumes than the training ones.")
        return list(args.data), list(args.val_data), f"validation: --val-data ({len(args.val_data)} volumes)"
    volumes = [d for d in args.data if d != "colin27"]
    train, val = split_volumes(volumes, args.val_fraction, args.seed)
    if "colin27" in args.data and args.val_fraction > 0:
        train, val = ["colin27", *train], ["colin27", *val]
        how = ("validation: Colin27's validation slabs (one subject: held out by slab, not by subject)"
               + (f" and {len(val) - 1} held-out volumes" if len(val) > 1 else ""))
    elif "colin27" in args.data:
        train, how = ["colin27", *train], "no validation (--val-fraction 0); the last step's weights are saved."
    elif val:
        how = f"validation: {len(val)} of {len(volumes)} volumes held out whole ({', '.join(val)})"
    else:
        how = ("no validation (one volume, or --val-fraction 0: slices of one volume are never split); the last "
               "step's weights are saved. Give --val-data or more volumes to validate.")
    return train, val, how


def run_train_ppn(args):
    from ..ppn import check_classes_present, ppn_validator, save_ppn, train_ppn
    from ..train.cache import EmbeddingStore

    inputs = [p for source in args.data + args.val_data for p in source.split(",")]
    check_checkpoint_output(args, inputs=inputs, metadata=False)   # the best weights so far then replace the run's own file
    classes = _ppn_classes(args)
    if args.axis != "k" and "colin27" in args.data + args.val_data:   # its slabs are axial (seeds_data.ppn_split)
        raise SonoSAMError(f"--data colin27 gives axial slices (its training and validation slabs are along k); "
                           f"leave out --axis {args.axis}, or give volumes of your own for that axis.")
    train_sources, val_sources, how = _ppn_split(args)
    images, label_maps, val_images, val_maps = [], [], [], []
    for source in train_sources:
        more = _ppn_volume(source, args, "train")
        images += more[0]
        label_maps += more[1]
    for source in val_sources:
        more = _ppn_volume(source, args, "val")
        val_images += more[0]
        val_maps += more[1]
    if not images:
        raise SonoSAMError("No training slices: give --data volumes with slices along --axis.")
    check_classes_present(label_maps, classes)   # before the model loads
    if val_maps:
        check_classes_present(val_maps, classes, "validation")
    print(f"{len(images)} training slices from {len(train_sources)} source(s); {how}", flush=True)
    model = load_model_from_args(args)
    store = EmbeddingStore(args.cache or Path(args.output).resolve().parent / "embeddings", model)
    every = max(1, args.steps // 10)
    settings = {"images": len(images), "steps": args.steps, "data": train_sources, "validation_data": val_sources,
                "split": how}
    validate = None
    if val_images:
        validate = ppn_validator(model, val_images, val_maps, classes, store=store)

    written = []   # after the run's first save, its own file is replaced

    def on_validation(ppn, step, result, best):
        print(f"validation at step {step} ({len(val_images)} slices): {result.summary()}", flush=True)
        if best:   # the best weights so far are on disk: an interrupted run keeps them
            save_ppn(ppn, args.output, {**settings, "best_step": step, "best_score": result.score},
                     overwrite=args.overwrite or bool(written))
            written.append(step)
            print(f"  best so far: saved step {step} to {args.output}", flush=True)

    def progress(s, n, loss):
        if s % every == 0 or s == n:
            print(f"step {s}/{n} loss {loss:.3f}", flush=True)

    ppn, log = train_ppn(model, images, label_maps, classes, steps=args.steps, batch=args.batch_size, lr=args.lr,
                         seed=args.seed, store=store, progress=progress,
                         validate=validate, validate_every=args.validate_every or every, on_validation=on_validation)
    extra = {**settings, "seconds": log.seconds}
    if log.best_step is not None:
        extra.update(best_step=log.best_step, validation=log.validation,
                     best_score=max(score for _, score in log.validation))
    path = save_ppn(ppn, args.output, extra, overwrite=args.overwrite or bool(written))
    kept = f"the step-{log.best_step} weights (best validation score)" if log.best_step is not None else \
        "the last step's weights"
    print(f"trained on {len(images)} slices in {log.seconds:.0f} s; wrote {path} ({kept}); use it with "
          f"`sonosam segment IMAGE --auto {next(iter(classes))} --ppn {path}`")
    return 0


def run_auto(args, image, model, predictor, ppn=None):
    """`sonosam segment --auto CLASS --ppn FILE`: the prompt predictor's mask (with --point clicks: semi-auto)."""
    from ..ppn import auto_segment, load_ppn
    from . import split_points

    ppn = ppn if ppn is not None else load_ppn(args.ppn)
    points, labels = split_points(args.point)
    result = auto_segment(ppn, model, predictor.embedding(image), args.auto, points=points, labels=labels)
    if not result.present:
        raise SonoSAMError(f"The prompt predictor finds no {args.auto} on this image (objectness "
                           f"{result.objectness:.2f}); click it instead, or pick another slice.")
    return result.prediction, result.box
