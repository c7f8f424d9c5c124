"""`sonosam segment`: one 2D image (a cine frame, a volume slice or a picture) + prompts -> mask files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import DataFileError
from ..image import axis_index, take_slice
from . import load_model_from_args, add_prompt_arguments, split_points

MASK_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".png")


def register(subparsers):
    parser = subparsers.add_parser(
        "segment", help="segment one frame/slice from point or box prompts",
        description="Segment one 2D frame of a cine DICOM, one slice of a volume (NRRD, NIfTI, MHA, DICOM "
                    "folder) or a PNG/JPEG picture. Coordinates are pixels of that 2D image: x = column, y = row.")
    parser.add_argument("image", type=Path)
    parser.add_argument("--frame", "--slice", dest="index", type=int, default=0,
                        help="frame of a cine or slice of a volume (default 0)")
    parser.add_argument("--axis", default="k", choices=["k", "j", "i"],
                        help="volume axis the slice is taken across (default k, axial for most scans)")
    add_prompt_arguments(parser)
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help=f"mask file ({', '.join(MASK_SUFFIXES)}); an overlay PNG is written beside it")
    parser.set_defaults(func=run)


def run(args):
    from ..io import Geometry, save_overlay_png, write_segmentation
    from ..predictor import Predictor

    output = args.output
    if not output.name.lower().endswith(MASK_SUFFIXES):
        raise DataFileError(f"Output {output} must end with one of {', '.join(MASK_SUFFIXES)}.")
    overlay = output.with_name(output.name.split(".")[0] + "_overlay.png")
    for path in (output, overlay):
        if path.exists() and not args.overwrite:
            raise DataFileError(f"{path} exists; choose another output or pass --overwrite.")

    started = time.perf_counter()
    image, volume, geometry, display = load_image(args.image, args.index, args.axis)
    points, labels = split_points(args.point)
    model = load_model_from_args(args)
    loaded = time.perf_counter()
    predictor = Predictor(model)
    embedding = predictor.embedding(image)
    encoded = time.perf_counter()
    prediction = model.decode(embedding, points=points, labels=labels, box=args.box, multimask=False)
    decoded = time.perf_counter()

    mask = prediction.mask
    if volume is not None:  # a slice of a volume: write the whole grid, only this slice filled
        full = np.zeros(volume.shape, dtype=bool)
        np.moveaxis(full, axis_index(args.axis), 0)[args.index] = mask
        mask = full
    elif not output.name.lower().endswith(".png"):
        mask = mask[np.newaxis]
    output.parent.mkdir(parents=True, exist_ok=True)
    write_segmentation(output, mask, geometry or Geometry(),
                       [{"name": "Segment_1", "color": (0.85, 0.3, 0.3)}], overwrite=args.overwrite)
    save_overlay_png(overlay, display, [prediction.mask], points=points, labels=labels, box=args.box)
    for note in prediction.notes:
        print(f"note: {note}")
    print(f"mask: {output} ({int(prediction.mask.sum())} pixels, predicted IoU {prediction.score:.3f})")
    print(f"overlay: {overlay}")
    print(f"time: model load {loaded - started:.2f} s, encode {encoded - loaded:.2f} s, "
          f"decode {1000 * (decoded - encoded):.0f} ms on {model.device}")
    return 0


def load_image(path: Path, index: int, axis: str):
    """-> (2D image to segment, source volume array or None, geometry for the mask file, display image)."""
    from ..io import read_cine, read_volume

    if not path.exists():
        raise DataFileError(f"{path} does not exist.")
    name = path.name.lower()
    if name.endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")):
        from PIL import Image

        picture = np.asarray(Image.open(path).convert("RGB"))
        return picture, None, None, picture
    if path.is_file() and (name.endswith(".dcm") or _is_dicom(path)):
        cine = read_cine(path)
        if not 0 <= index < cine.n_frames:
            raise DataFileError(f"Frame {index} is outside 0..{cine.n_frames - 1} of {path}.")
        frame = cine.frames[index]
        return frame, None, cine.frame_geometry(), frame
    volume = read_volume(path)
    image = take_slice(volume.array, axis, index)
    return image, volume.array, volume.geometry, image


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"
