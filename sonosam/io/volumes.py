"""3D scalar volumes: `Volume`, `read_volume`, `write_volume` (NRRD, NIfTI, MHA and DICOM series via
SimpleITK). Arrays are indexed [k, j, i] (z, y, x) as `sitk.GetArrayFromImage` gives them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataFileError, InputImageError
from .atomic import PathLike, atomic_output
from .checks import _not_3d_message, check_array, check_input_file, default_budget, load_sitk_image
from .geometry import Geometry


@dataclass
class Volume:
    """A scalar 3D image: `array` indexed [k, j, i] (z, y, x), plus where it lies in space."""

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise InputImageError(_not_3d_message(self.array.shape))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.array.shape


def _sitk():
    import SimpleITK as sitk
    return sitk


def _image_to_volume(image, path: PathLike) -> Volume:
    sitk = _sitk()
    hint = "; for an ultrasound cine use sonosam.io.read_cine" if str(path).lower().endswith(".dcm") else ""
    if str(path).lower().endswith(".seg.nrrd") and (image.GetNumberOfComponentsPerPixel() > 1
                                                    or image.GetDimension() > 3):
        raise InputImageError(f"{path} is a segmentation whose segments overlap (one layer per component); read "
                              "it with sonosam.io.read_segmentation, or export a label map from Slicer.")
    components = image.GetNumberOfComponentsPerPixel()
    size = tuple(reversed(image.GetSize()))
    if components > 1 or image.GetDimension() > 3:
        shape = size + ((components,) if components > 1 else ())
        raise InputImageError(f"{path}: " + _not_3d_message(shape, components, hint))
    array = sitk.GetArrayFromImage(image)
    geometry = Geometry.from_image(image)
    if image.GetDimension() == 2:
        array = array[np.newaxis]
    return Volume(array, geometry)


def labels_on_grid(labels: Volume, shape, geometry: Geometry, name="The label map") -> np.ndarray:
    """A label map's voxels on another grid (``shape`` [k, j, i], ``geometry``): as they are where both grids agree,
    or where the label map is the same size and carries no placement of its own (saved by a script without one);
    else resampled (nearest) where they lie in space, so a label map stored flipped, cropped or on another spacing
    is never used voxel by voxel. Refused when most of its labels fall outside the grid (placements that disagree)."""
    tolerance = 1e-3 * min(geometry.spacing)
    if tuple(labels.shape) == tuple(shape) and (labels.geometry.allclose(geometry, atol=tolerance)
                                                or labels.geometry.allclose(Geometry())):
        return labels.array
    sitk = _sitk()
    moving = sitk.GetImageFromArray(np.ascontiguousarray(labels.array))
    labels.geometry.apply_to(moving)
    reference = sitk.Image([int(n) for n in reversed(tuple(shape))], moving.GetPixelID())
    geometry.apply_to(reference)
    resampled = sitk.GetArrayFromImage(sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                     moving.GetPixelID()))
    before = np.count_nonzero(labels.array) * float(np.prod(labels.geometry.spacing))   # labelled mm^3
    after = np.count_nonzero(resampled) * float(np.prod(geometry.spacing))
    if before and after < 0.5 * before:
        raise DataFileError(f"{name} lies elsewhere in space than the image: on the image's grid it keeps "
                            f"{after / before:.0%} of its labelled volume (label map origin "
                            f"{np.round(labels.geometry.origin, 1).tolist()}, spacing "
                            f"{np.round(labels.geometry.spacing, 3).tolist()}; image origin "
                            f"{np.round(geometry.origin, 1).tolist()}, spacing {np.round(geometry.spacing, 3).tolist()}). "
                            "Give the label map made on this image.")
    return resampled


def read_labels(path: PathLike, volume: Volume) -> np.ndarray:
    """A label map file's voxels on ``volume``'s grid (``labels_on_grid``)."""
    return labels_on_grid(read_volume(path), volume.shape, volume.geometry, f"Label map {path}")


def read_volume(path: PathLike, series_id: str | None = None) -> Volume:
    """Read a NRRD/NIfTI/MHA (or any SimpleITK format) file, or a folder holding a DICOM series, through the
    input gate's checks (sonosam.io.gate: size budget before decoding, finite values after).

    A folder with several series reads the one with the most files unless `series_id` names one."""
    path = check_input_file(path, allow_folder=True, what="volume")
    volume = _image_to_volume(load_sitk_image(path, default_budget(), series_id), path)
    check_array(volume.array, path)
    return volume


def write_volume(volume: Volume, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write a volume with its geometry; the format follows the extension (.nrrd, .nii.gz, .mha...)."""
    sitk = _sitk()
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise InputImageError(_not_3d_message(array.shape))
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype.kind not in "uif":
        raise InputImageError(f"Cannot write a volume of dtype {array.dtype}; use an integer or float array.")
    direction = volume.geometry.direction
    if str(path).lower().endswith((".nii", ".nii.gz")) and not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise DataFileError(f"{Path(path).name}: NIfTI cannot hold this volume's sheared (non-orthogonal) axes; nothing "
                            "was written: write .nrrd (or .seg.nrrd) instead.")
    image = sitk.GetImageFromArray(array)
    volume.geometry.apply_to(image)
    with atomic_output(path, overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), True)
        back = Geometry.from_image(_verify_written(sitk, tmp, image.GetSize(), array.nbytes))
        corners = np.array([[i, j, k, 1.0] for i in (0, array.shape[2] - 1) for j in (0, array.shape[1] - 1)
                            for k in (0, array.shape[0] - 1)])
        intended = corners @ volume.geometry.ijk_to_lps().T
        moved = float(np.abs(corners @ back.ijk_to_lps().T - intended).max())
        # a format may store the placement in float32 (NIfTI): that rounding is not a loss
        if moved > 1e-3 * min(volume.geometry.spacing) + 1e-6 * float(np.abs(intended).max()):
            raise DataFileError(f"{Path(path).name}: this format cannot hold the volume's placement in space (read "
                                f"back, its voxels lie up to {moved:.3g} mm away): nothing was written; write .nrrd "
                                "(or .seg.nrrd) instead.")
    return Path(path)


def _verify_written(sitk, path: Path, size, nbytes: int):
    """Read the file back: ITK's NIfTI writer reports a full disk only on stderr and leaves a short file,
    which must never be published (an uncompressed .nii even reads back, zero-filled: hence its size)."""
    name = path.name.lower()
    if name.endswith(".nii") and path.stat().st_size < 348 + nbytes:
        raise OSError(f"the written file holds {path.stat().st_size} of {348 + nbytes} bytes")
    if name.endswith(".nii.gz"):  # ITK also reads a cut-off gzip stream without complaint
        import gzip
        import zlib

        try:
            with gzip.open(path, "rb") as handle:
                length = 0
                while chunk := handle.read(1 << 22):
                    length += len(chunk)
        except (EOFError, OSError, zlib.error) as error:
            raise OSError(f"the written file is cut short ({error})") from None
        if length < 348 + nbytes:
            raise OSError(f"the written file holds {length} of {348 + nbytes} bytes")
    try:
        back = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise OSError(f"the written file does not read back ({str(error).strip().splitlines()[-1]})") from None
    if tuple(back.GetSize()) != tuple(size):
        raise OSError(f"the written file reads back as {back.GetSize()}, not {tuple(size)}")
    return back
