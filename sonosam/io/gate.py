"""The input gate: every image file a command, the evaluation or the server reads goes through `read_image`.

A file is checked before it is decoded (exists, is a file, not empty, its content is the format its name or
its first bytes say, and the size its header declares fits the memory budget *before* anything is
allocated), and the array after (numeric, finite, not empty, dimensions a command can use). Every refusal is
one `SonoSAMError` line naming the file, what is wrong and what to do.

What is refused and why is listed in docs/INPUTS.md; the budget is `SONOSAM_MAX_IMAGE_BYTES` (default 4 GiB
of decoded pixels).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFileError, InputImageError
from .atomic import PathLike
from .checks import (MemoryBudget, _check_dicom_header, _dicom_header, _first_line, _load_dicom_series,
                     _not_3d_message, check_array, check_input_file, default_budget, load_sitk_image, read_npy)
from .cine import read_cine
from .geometry import Geometry
from .segmentations import check_seg_header, read_segmentation

PICTURE_FORMATS = ("png", "jpeg", "tiff", "bmp", "gif")


_EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp",
               ".gif": "gif", ".dcm": "dicom", ".npy": "npy", ".nrrd": "nrrd", ".seg.nrrd": "nrrd",
               ".nii": "nifti", ".nii.gz": "nifti", ".mha": "meta", ".mhd": "meta"}


def _expected_format(path: Path) -> str | None:
    name = path.name.lower()
    for ext in sorted(_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return _EXTENSIONS[ext]
    return None


def sniff_format(path: Path) -> str | None:
    """The format the file's first bytes say it is (None: not one we know by its magic bytes)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:2] == b"BM":
        return "bmp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[:4] == b"NRRD":
        return "nrrd"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if len(head) >= 348 and (int.from_bytes(head[:4], "little") in (348, 540) or int.from_bytes(head[:4], "big") in (348, 540)):
        if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00"):
            return "nifti"
    if head.lstrip()[:10] in (b"ObjectType", b"NDims = 3\n"[:10]) or head.lstrip().startswith(b"NDims"):
        return "meta"
    return None


_FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP", "gif": "GIF", "dicom": "DICOM",
                 "npy": "NumPy .npy", "nrrd": "NRRD", "nifti": "NIfTI", "meta": "MetaImage", "gzip": "gzip"}


def _resolve_format(path: Path) -> str:
    """The reader to use: the content decides; a name that promises another format than the content is an
    error (a renamed or damaged file), and content we do not recognise goes to SimpleITK, which knows more."""
    expected, found = _expected_format(path), sniff_format(path)
    if found == "gzip":  # .nii.gz, .nrrd.gz...: SimpleITK reads the compressed formats it knows
        return "nifti" if expected in (None, "nifti") else "sitk"
    if expected == "dicom" and found is None:
        return "dicom"  # DICOM without the 128-byte preamble: pydicom decides
    if expected is not None and found is not None and expected != found:
        raise DataFileError(f"{path} is named like a {_FORMAT_NAMES[expected]} file but its content is "
                            f"{_FORMAT_NAMES[found]}; rename it to match its content.")
    if expected in PICTURE_FORMATS + ("npy", "nrrd") and found is None:
        raise DataFileError(f"{path} is not a {_FORMAT_NAMES[expected]} file (its first bytes are not a "
                            f"{_FORMAT_NAMES[expected]} signature); it is damaged or another kind of file.")
    return found or expected or "sitk"


@dataclass
class LoadedImage:
    """What `read_image` returns.

    `kind`: "2d" (array (H, W) or (H, W, 3)), "volume" ([k, j, i], or [k, j, i, C] when `vector`) or
    "cine" (frames (T, H, W) uint8 from a DICOM loop, or (T, H, W[, 3]) from a .npy or multi-page TIFF).
    `geometry`: where the pixels lie (None for pictures and .npy, which carry none). `sitk_image`: the
    SimpleITK image when SimpleITK read it (evaluation resamples label maps onto it). `cine`: the `Cine`
    (spacing, frame time) for DICOM loops."""

    array: np.ndarray
    kind: str
    source: Path
    format: str
    vector: bool = False
    geometry: Geometry | None = None
    sitk_image: Any = None
    cine: Any = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return 1 if self.kind == "2d" else self.array.shape[0]


def read_image(path: PathLike, *, role: str = "image", budget: MemoryBudget | None = None,
               allow_folder: bool = True) -> LoadedImage:
    """Read an image, volume, cine loop or label map through the gate (module doc).

    Formats by content: PNG/JPEG/TIFF/BMP/GIF (Pillow; 16-bit and float pixels kept), DICOM (a multi-frame
    file is a cine loop, via `read_cine`), a DICOM series folder, NRRD (a Slicer `.seg.nrrd` gives its
    labelmap), NIfTI, MetaImage (SimpleITK) and NumPy `.npy` (numeric arrays only, never pickles).
    `role`: "image" or "labels" (label maps keep palette indices of PNGs instead of colours)."""
    if role not in ("image", "labels"):
        raise ValueError(f"role must be 'image' or 'labels', not {role!r}")
    budget = budget or default_budget()
    path = check_input_file(path, allow_folder=allow_folder, what="label map" if role == "labels" else "image")
    if path.is_dir():
        loaded = _read_dicom_series(path, budget)
    else:
        fmt = _resolve_format(path)
        if fmt in PICTURE_FORMATS:
            loaded = _read_picture(path, fmt, budget, role)
        elif fmt == "npy":
            array = read_npy(path, budget)
            loaded = _from_plain_array(array, path)
        elif fmt == "dicom":
            loaded = _read_dicom(path, budget)
        elif fmt == "nrrd" and _is_segmentation(path):
            loaded = _read_seg_nrrd(path, budget)
        else:
            loaded = _read_sitk(path, budget, fmt)
    check_array(loaded.array, path, vector=loaded.vector, role=role)
    return loaded


def _from_plain_array(array: np.ndarray, path: Path) -> LoadedImage:
    """A .npy array: (H, W) or (H, W, 3|4) is a 2D image; (T, H, W) or (T, H, W, 3) a stack of frames."""
    if array.ndim == 2:
        return LoadedImage(array, "2d", path, "npy")
    if array.ndim == 3 and array.shape[-1] in (3, 4) and min(array.shape[:2]) > 4:
        return LoadedImage(array[..., :3], "2d", path, "npy", vector=True)
    if array.ndim == 3:
        return LoadedImage(array, "cine", path, "npy")
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        return LoadedImage(array[..., :3], "cine", path, "npy", vector=True)
    raise InputImageError(f"{path} holds an array of shape {array.shape}; give (H, W), (H, W, 3), frames (T, H, W) "
                          f"or (T, H, W, 3).")


def _picture_array(frame, mode: str, role: str) -> tuple[np.ndarray, bool]:
    """One Pillow frame -> (array, is colour). 16-bit and float pixels keep their values."""
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(frame, dtype=np.uint16), False
    if mode == "I":
        array = np.asarray(frame, dtype=np.int32)
        return (array.astype(np.uint16) if array.min() >= 0 and array.max() <= 65535 else array), False
    if mode == "F":
        return np.asarray(frame, dtype=np.float32), False
    if mode == "1":
        return np.asarray(frame, dtype=np.uint8), False
    if mode == "L":
        return np.asarray(frame), False
    if mode == "P" and role == "labels":  # palette indices are the labels
        return np.asarray(frame), False
    if mode in ("LA", "La"):
        return np.asarray(frame.convert("L")), False
    return np.asarray(frame.convert("RGB")), True


_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 3, "LA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4,
                    "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3}


def _read_picture(path: Path, fmt: str, budget: MemoryBudget, role: str) -> LoadedImage:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    name = _FORMAT_NAMES[fmt]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our budget decides, below
        try:
            picture = Image.open(path)
        except Image.DecompressionBombError as error:
            raise InputImageError(f"{path}: Pillow refuses to open it as a possible decompression bomb "
                                  f"({_first_line(error)}); nothing was decoded. Downsample it first.") from error
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DataFileError(f"{path} is not a readable {name} image ({_first_line(error)}).") from error
        with picture:
            width, height = picture.size
            frames = int(getattr(picture, "n_frames", 1) or 1)
            budget.check(path, (frames, height, width), _BYTES_PER_PIXEL.get(picture.mode, 4), "pixels")
            try:
                arrays = [_picture_array(frame, frame.mode, role) for frame in ImageSequence.Iterator(picture)]
            except Image.DecompressionBombError as error:
                raise InputImageError(f"{path}: Pillow refuses it as a possible decompression bomb "
                                      f"({_first_line(error)}). Downsample it first.") from error
            except (OSError, SyntaxError, ValueError, EOFError) as error:
                message = _first_line(error)
                hint = " It is truncated: the file was not written completely." if "truncat" in message.lower() else ""
                raise DataFileError(f"{path}: cannot decode the {name} pixels ({message}).{hint}") from error
    if len(arrays) == 1:
        array, vector = arrays[0]
        return LoadedImage(array, "2d", path, fmt, vector=vector)
    if len({a.shape for a, _ in arrays}) != 1 or len({v for _, v in arrays}) != 1:
        raise InputImageError(f"{path}: its {len(arrays)} pages differ in size or colour; save one image per file.")
    return LoadedImage(np.stack([a for a, _ in arrays]), "cine", path, fmt, vector=arrays[0][1])


def _read_dicom(path: Path, budget: MemoryBudget) -> LoadedImage:
    ds = _dicom_header(path)
    frames = _check_dicom_header(path, ds, budget)
    if frames > 1:
        cine = read_cine(path)
        return LoadedImage(cine.frames, "cine", path, "dicom", geometry=cine.frame_geometry(), cine=cine,
                           notes=list(cine.notes))
    if ds.get("Modality") == "US" or "SequenceOfUltrasoundRegions" in ds:  # mm spacing lives in the regions
        cine = read_cine(path)
        return LoadedImage(cine.frames[0], "2d", path, "dicom", geometry=cine.frame_geometry(), cine=cine,
                           notes=list(cine.notes))
    try:
        return _read_sitk(path, budget, "dicom")
    except DataFileError as sitk_error:  # e.g. a colour or compressed frame SimpleITK cannot decode
        import pydicom

        try:
            array = pydicom.dcmread(str(path), force=True).pixel_array  # pydicom 3 converts YBR to RGB
        except Exception as error:  # noqa: BLE001 - report both readers' reasons
            raise DataFileError(f"{path}: neither SimpleITK ({sitk_error}) nor pydicom ({_first_line(error)}) "
                                f"can decode it.") from error
        vector = array.ndim == 3 and array.shape[-1] in (3, 4)
        return LoadedImage(array[..., :3] if vector else array, "2d", path, "dicom", vector=vector)


def _read_sitk(path: Path, budget: MemoryBudget, fmt: str) -> LoadedImage:
    return _from_sitk(load_sitk_image(path, budget), path, fmt)


def _from_sitk(image, path: Path, fmt: str) -> LoadedImage:
    import SimpleITK as sitk

    vector = image.GetNumberOfComponentsPerPixel() > 1
    if image.GetDimension() > 3:
        size = tuple(reversed(image.GetSize()))
        raise InputImageError(f"{path}: " + _not_3d_message(size + ((image.GetNumberOfComponentsPerPixel(),) if vector else ())))
    array = sitk.GetArrayFromImage(image)
    if vector and array.shape[-1] == 4:
        array = array[..., :3]
    geometry = Geometry.from_image(image)
    if image.GetDimension() == 2:
        return LoadedImage(array, "2d", path, fmt, vector=vector, geometry=geometry, sitk_image=image)
    return LoadedImage(array, "volume", path, fmt, vector=vector, geometry=geometry, sitk_image=image)


def _read_dicom_series(path: Path, budget: MemoryBudget) -> LoadedImage:
    return _from_sitk(_load_dicom_series(path, budget), path, "dicom-series")


def _is_segmentation(path: Path) -> bool:
    return check_seg_header(path) is not None


def _read_seg_nrrd(path: Path, budget: MemoryBudget) -> LoadedImage:
    header = check_seg_header(path)
    sizes = [int(s) for s in header.get("sizes", [])]
    budget.check(path, sizes, 2, "voxels")
    seg = read_segmentation(path)
    return LoadedImage(seg.labelmap, "volume", path, "seg.nrrd", geometry=seg.geometry,
                       notes=[f"segments: {', '.join(s.name for s in seg.segments)}"])

