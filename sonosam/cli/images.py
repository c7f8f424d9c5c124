"""The one 2D image a command segments, and the mask files it may write (shared by `segment` and `seeds`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataFileError, InputImageError, PromptError
from ..image import take_slice

MASK_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".png")


def mask_outputs(output: Path, overwrite: bool, inputs) -> Path:
    """The overlay beside a mask ``output`` (scan.v1.nii.gz -> scan.v1_overlay.png); both refused before any work
    where they would replace a file (without --overwrite) or an input (ever), or cannot be written."""
    from ..io import check_output_path

    suffix = next((s for s in MASK_SUFFIXES if output.name.lower().endswith(s)), None)
    if suffix is None:
        raise DataFileError(f"Output {output} must end with one of {', '.join(MASK_SUFFIXES)}.")
    overlay = output.with_name(output.name[: -len(suffix)] + "_overlay.png")
    for path in (output, overlay):
        check_output_path(path, overwrite, inputs=inputs, parents=True)
    return overlay


def check_mask_format(output: Path, volume, image: Path) -> None:
    """A slice of a volume is written on the volume's grid, which a .png cannot hold: said before the model loads."""
    if volume is not None and output.name.lower().endswith(".png"):
        raise DataFileError(f"{image} is a volume: its slice's mask is written on the volume's grid, which a .png "
                            "cannot hold. Write .nii.gz or .seg.nrrd instead.")


def load_image(path: Path, index: int | None, axis: str):
    """-> (2D image to segment, source volume array or None, geometry for the mask file, display image),
    through the input gate (sonosam.io.read_image)."""
    from ..io import read_image
    from ..io.volumes import _not_3d_message

    loaded = read_image(path)
    if loaded.kind == "2d":
        if index not in (None, 0):
            raise PromptError(f"--frame/--slice {index}: {path} is a single 2D image; leave out --frame.")
        return loaded.array, None, loaded.geometry, loaded.array
    index = 0 if index is None else index
    if loaded.kind == "cine":
        if not 0 <= index < loaded.n_frames:
            raise DataFileError(f"Frame {index} is outside 0..{loaded.n_frames - 1} of {path}.")
        frame = loaded.array[index]
        return frame, None, loaded.geometry, frame
    if loaded.vector:
        raise InputImageError(f"{path}: " + _not_3d_message(loaded.array.shape, loaded.array.shape[-1]))
    image = take_slice(loaded.array, axis, index)
    return image, loaded.array, loaded.geometry, image
