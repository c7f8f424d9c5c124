"""`sonosam refine`, `sonosam train assist|ppn` and `sonosam segment --auto`: the seed papers' modes that
remove or reduce clicks (sonosam.refine, sonosam.assist, sonosam.ppn; docs/seeds.md)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import DataFileError, SonoSAMError
from . import load_model_from_args


def register(subparsers):
    parser = subparsers.add_parser(
        "refine", help="refine a coarse probability map into a mask (zero-shot, no clicks)",
        description="Refine a coarse probability map (0..1, or a 0/255 picture) of one structure on one 2D frame or "
                    "slice: positive points by k-medoids on the thresholded map, negatives optimised on the context "
                    "minus the map, then the frozen model (docs/seeds.md). Files on a volume's grid are sliced "
                    "like the image.")
    parser.add_argument("image", type=Path)
    parser.add_argument("--coarse", type=Path, required=True, help="probability map, same grid as the image")
    parser.add_argument("--context", type=Path, help="mask of the anatomy around the structure (default: a ring)")
    parser.add_argument("--frame", "--slice", dest="index", type=int, default=0)
    parser.add_argument("--axis", default="k", choices=["k", "j", "i"])
    parser.add_argument("--model", default="litemedsam_clicks", help="a click-capable model (default litemedsam_clicks)")
    parser.add_argument("--checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100, help="AdamW steps for the negatives (early stop)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(func=run_refine)


def _outputs(output: Path, overwrite: bool) -> Path:
    from .images import MASK_SUFFIXES

    if not output.name.lower().endswith(MASK_SUFFIXES):
        raise DataFileError(f"Output {output} must end with one of {', '.join(MASK_SUFFIXES)}.")
    overlay = output.with_name(output.name.split(".")[0] + "_overlay.png")
    for path in (output, overlay):
        if path.exists() and not overwrite:
            raise DataFileError(f"{path} exists; choose another output or pass --overwrite.")
    return overlay


def _map_like(path: Path, image: np.ndarray, volume, index: int, axis: str, what: str) -> np.ndarray:
    """A 2D map for the image: the file itself (2D) or its slice (a volume on the image's grid)."""
    from ..evaluate.datasets import read_array
    from ..image import take_slice

    array = np.asarray(read_array(path)[0])
    if array.ndim == 3 and volume is not None and array.shape == volume.shape:
        array = take_slice(array, axis, index)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., 0]
    if array.shape != image.shape[:2]:
        raise DataFileError(f"{what} {path} is {array.shape} but the image is {image.shape[:2]}; give it on the same grid.")
    return array


def _write(args, overlay, image, volume, geometry, display, mask, points, labels, box=None, name="Segment_1"):
    from ..image import axis_index
    from ..io import Geometry, save_overlay_png, write_segmentation

    full = mask
    if volume is not None:
        full = np.zeros(volume.shape, dtype=bool)
        np.moveaxis(full, axis_index(args.axis), 0)[args.index or 0] = mask
    elif not args.output.name.lower().endswith(".png"):
        full = mask[np.newaxis]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_segmentation(args.output, full, geometry or Geometry(), [{"name": name, "color": (0.85, 0.3, 0.3)}],
                       overwrite=args.overwrite)
    save_overlay_png(overlay, display, [mask], points=points, labels=labels, box=box, overwrite=args.overwrite)


def run_refine(args):
    from ..refine import refine
    from .images import load_image

    overlay = _outputs(args.output, args.overwrite)
    image, volume, geometry, display = load_image(args.image, args.index, args.axis)
    coarse = _map_like(args.coarse, image, volume, args.index, args.axis, "Coarse map").astype(np.float32)
    if coarse.max() > 1:
        if coarse.max() > 255:
            raise DataFileError(f"Coarse map {args.coarse} has values up to {coarse.max():g}: give probabilities 0..1 "
                                "or a 0..255 picture.")
        coarse = coarse / 255.0
    context = None if args.context is None else \
        _map_like(args.context, image, volume, args.index, args.axis, "Context mask") > 0
    model = load_model_from_args(args)
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
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SonoSAMError(f"--slices {text!r} must be comma-separated slice numbers, e.g. 40,52,64") from None


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
    assist.add_argument("--steps", type=int, default=30)
    assist.add_argument("--seed", type=int, default=0)
    assist.add_argument("-o", "--output", required=True, help="OUT.pth (+ OUT.json), loadable with --model OUT.pth")
    assist.set_defaults(func=run_train_assist)

    ppn = sub.add_parser("ppn", help="Sam2Rad prompt predictor: segment a class with no clicks",
                         description="Train a prompt predictor (learned box, mask prompt and prompt embeddings per "
                                     "class, objectness) over the frozen model, on labelled slices.")
    ppn.add_argument("--data", action="append", required=True, metavar="VOLUME,LABELS",
                     help="a volume and its label map (repeatable), or 'colin27' (the bundled MRI's training slabs)")
    ppn.add_argument("--class", dest="classes", action="append", required=True, metavar="NAME[=VALUE]",
                     help="class name and label value (AAL names, White_Matter_L/R and Lateral_Ventricle_L/R need no "
                          "value with colin27); repeatable")
    ppn.add_argument("--axis", default="k", choices=["k", "j", "i"])
    ppn.add_argument("--stride", type=int, default=1, help="use every n-th slice")
    ppn.add_argument("--model", default="litemedsam")
    ppn.add_argument("--checkpoint")
    ppn.add_argument("--steps", type=int, default=150)
    ppn.add_argument("--batch-size", type=int, default=4)
    ppn.add_argument("--lr", type=float, default=1e-3)
    ppn.add_argument("--seed", type=int, default=0)
    ppn.add_argument("--cache", help="embedding cache folder (default: OUTPUT_DIR/embeddings)")
    ppn.add_argument("-o", "--output", required=True, help="OUT.ppn.pt")
    ppn.set_defaults(func=run_train_ppn)


def run_train_assist(args):
    from ..assist import save_assist, train_assist
    from ..image import take_slice
    from ..io import read_volume

    volume = read_volume(args.volume).array
    labels = read_volume(args.labels).array
    if labels.shape != volume.shape:
        raise DataFileError(f"Label map {args.labels} is {labels.shape}, the volume {volume.shape}: same grid needed.")
    slices = _parse_slices(args.slices)
    if not 1 <= len(slices) <= 8:
        raise SonoSAMError(f"Give 2-5 annotated slices (got {len(slices)}).")
    images = [take_slice(volume, args.axis, i) for i in slices]
    masks = [take_slice(labels, args.axis, i) == args.label for i in slices]
    model = load_model_from_args(args)
    from ..volume import volume_window

    result = train_assist(model, images, masks, kinds=tuple(args.kinds.split(",")), steps=args.steps, seed=args.seed,
                          window=volume_window(volume))
    path, meta = save_assist(result, args.output)
    print(f"trained {result.trained_parameters} prompt-encoder parameters on {len(slices)} slices in "
          f"{result.seconds:.1f} s (+ {result.encode_seconds:.1f} s encoding); loss {result.losses[0]:.3f} -> "
          f"{np.mean(result.losses[-5:]):.3f}")
    print(f"wrote {path} and {meta}; use it with --model {path}")
    return 0


def _ppn_data(args):
    from ..image import take_slice
    from ..io import read_volume

    classes: dict[str, int] = {}
    names = None
    for text in args.classes:
        name, _, value = text.partition("=")
        if not value:
            from ..data import aal_label_names
            from ..train.click_data import TISSUE_LABELS

            if names is None:
                names = {v: k for k, v in {**aal_label_names(), **TISSUE_LABELS}.items()}
            if name not in names:
                raise SonoSAMError(f"--class {name}: give NAME=VALUE (the label value of {name} in the label map).")
            value = names[name]
        classes[name] = int(value)
    images, label_maps = [], []
    for source in args.data:
        if source == "colin27":
            from ..seeds_data import ppn_labels, ppn_split

            volume, labels = ppn_labels()
            train = ppn_split(stride=args.stride)["train"]
            images += [volume[i] for i in train]
            label_maps += [labels[i] for i in train]
            continue
        if "," not in source:
            raise SonoSAMError(f"--data {source!r} must be VOLUME,LABELS or colin27.")
        image_path, label_path = source.split(",", 1)
        volume, labels = read_volume(image_path).array, read_volume(label_path).array
        if volume.shape != labels.shape:
            raise DataFileError(f"{label_path} is {labels.shape}, {image_path} {volume.shape}: same grid needed.")
        for i in range(0, volume.shape[{"k": 0, "j": 1, "i": 2}[args.axis]], args.stride):
            images.append(take_slice(volume, args.axis, i))
            label_maps.append(take_slice(labels, args.axis, i))
    return images, label_maps, classes


def run_train_ppn(args):
    from ..ppn import save_ppn, train_ppn
    from ..train.cache import EmbeddingStore

    images, label_maps, classes = _ppn_data(args)
    model = load_model_from_args(args)
    store = EmbeddingStore(args.cache or Path(args.output).resolve().parent / "embeddings", model)
    every = max(1, args.steps // 10)
    ppn, log = train_ppn(model, images, label_maps, classes, steps=args.steps, batch=args.batch_size, lr=args.lr,
                         seed=args.seed, store=store,
                         progress=lambda s, n, loss: print(f"step {s}/{n} loss {loss:.3f}", flush=True)
                         if s % every == 0 or s == n else None)
    path = save_ppn(ppn, args.output, {"images": len(images), "steps": args.steps, "seconds": log.seconds,
                                       "data": args.data})
    print(f"trained on {len(images)} slices in {log.seconds:.0f} s; wrote {path}; use it with "
          f"`sonosam segment IMAGE --auto {next(iter(classes))} --ppn {path}`")
    return 0


def run_auto(args, image, model, predictor):
    """`sonosam segment --auto CLASS --ppn FILE`: the prompt predictor's mask (with --point clicks: semi-auto)."""
    from ..ppn import auto_segment, load_ppn
    from . import split_points

    ppn = load_ppn(args.ppn)
    points, labels = split_points(args.point)
    result = auto_segment(ppn, model, predictor.embedding(image), args.auto, points=points, labels=labels)
    if not result.present:
        raise SonoSAMError(f"The prompt predictor finds no {args.auto} on this image (objectness "
                           f"{result.objectness:.2f}); click it instead, or pick another slice.")
    return result.prediction, result.box
