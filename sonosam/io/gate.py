"""The input gate: every image file a command, the evaluation or the server reads goes through `read_image`.

A file is checked before it is decoded (exists, is a file, not empty, its content is the format its name or
its first bytes say, and the size its header declares fits the memory budget *before* anything is
allocated), and the array after (numeric, finite, not empty, dimensions a command can use). Every refusal is
one `SonoSAMError` line naming the file, what is wrong and what to do.

What is refused and why is listed in docs/INPUTS.md; the budget is `SONOSAM_MAX_IMAGE_BYTES` (default 4 GiB
of decoded pixels).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFileError, InputImageError, SonoSAMError
from .atomic import PathLike
from .geometry import Geometry

DEFAULT_MAX_BYTES = 4 << 30
PICTURE_FORMATS = ("png", "jpeg", "tiff", "bmp", "gif")
# What each format's file names end with, to say "x.png is not a PNG file" rather than guess.
_EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp",
               ".gif": "gif", ".dcm": "dicom", ".npy": "npy", ".nrrd": "nrrd", ".seg.nrrd": "nrrd",
               ".nii": "nifti", ".nii.gz": "nifti", ".mha": "meta", ".mhd": "meta"}


# ------------------------------------------------------------------------------------------------ budget

def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


@dataclass(frozen=True)
class MemoryBudget:
    """The most decoded bytes one image may need; checked against header-declared sizes before decoding."""

    max_bytes: int = DEFAULT_MAX_BYTES

    def check(self, path: PathLike, shape, itemsize: int, what: str = "pixels") -> None:
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise DataFileError(f"{path}: its header declares a negative size {shape}; the file is corrupt.")
        need = int(itemsize)
        for s in shape:
            need *= s  # Python ints: no overflow however large the header's numbers
        if need > self.max_bytes:
            raise InputImageError(
                f"{path}: its header declares {' x '.join(map(str, shape))} {what} ({_human(need)} decoded), more "
                f"than the {_human(self.max_bytes)} memory budget; nothing was allocated. Crop or downsample it "
                f"first, or raise SONOSAM_MAX_IMAGE_BYTES if this machine has the memory.")


def default_budget() -> MemoryBudget:
    """The budget from $SONOSAM_MAX_IMAGE_BYTES (bytes, or with a K/M/G suffix), else 4 GiB."""
    text = os.environ.get("SONOSAM_MAX_IMAGE_BYTES", "").strip()
    if not text:
        return MemoryBudget()
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", text, re.IGNORECASE)
    if not match:
        raise SonoSAMError(f"SONOSAM_MAX_IMAGE_BYTES={text!r} is not a size; give bytes or e.g. 8G.")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2).upper()]
    return MemoryBudget(int(match.group(1)) * scale)


# ------------------------------------------------------------------------------------------- file checks

def check_input_file(path: PathLike, *, allow_folder: bool = False, what: str = "input") -> Path:
    """Exists, is a readable file (or a folder where one is allowed) and is not empty."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"The {what} {path} does not exist; check the path.")
    if path.is_dir():
        if allow_folder:
            return path
        raise DataFileError(f"The {what} {path} is a folder, not a file; give the image file itself.")
    if not path.is_file():
        raise DataFileError(f"The {what} {path} is not a regular file (a device or a pipe?); give an image file.")
    if not os.access(path, os.R_OK):
        raise DataFileError(f"The {what} {path} is not readable for you; check its permissions.")
    if path.stat().st_size == 0:
        raise DataFileError(f"The {what} {path} is empty (0 bytes); the file was not written completely.")
    return path


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


# --------------------------------------------------------------------------------------------- the image

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


def check_array(array: np.ndarray, path: PathLike = "the image", *, vector: bool = False, role: str = "image") -> None:
    """Numeric, not empty, finite. Sizes a model cannot use are refused where the 2D image is formed
    (`sonosam.image.check_image_size`), since a volume's usable slices depend on the axis."""
    if array.dtype == object or array.dtype.kind not in "buif":
        raise InputImageError(f"{path} holds {array.dtype} values; an image must hold numbers (integers or floats).")
    if array.size == 0:
        raise InputImageError(f"{path} holds no pixels (shape {array.shape}).")
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise InputImageError(f"{path} has {bad} NaN or infinite {'label values' if role == 'labels' else 'pixels'} "
                                  f"(of {array.size}); replace them (e.g. numpy.nan_to_num) and save it again.")


# ------------------------------------------------------------------------------------------------ readers

def read_npy(path: PathLike, budget: MemoryBudget | None = None) -> np.ndarray:
    """A plain numeric `.npy` array; pickled (object) arrays, other files and truncated arrays are refused."""
    path = check_input_file(path)
    budget = budget or default_budget()
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in reader:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = reader[version](handle, max_header_size=100_000)
        except (ValueError, SyntaxError, EOFError) as error:
            raise DataFileError(f"{path} is not a NumPy .npy array file ({_first_line(error)}); save one with "
                                f"numpy.save(path, array).") from error
        offset = handle.tell()
    if dtype.hasobject:
        raise DataFileError(f"{path} holds Python objects (a pickled array), which could run code when loaded; "
                            f"refusing it. Save a numeric array: numpy.save(path, frames.astype(numpy.uint8)).")
    if dtype.kind not in "buif":
        raise DataFileError(f"{path} holds {dtype} values; save a numeric (integer or float) array.")
    budget.check(path, shape, dtype.itemsize, "array elements")
    need = int(np.prod(shape, dtype=object) if shape else 1) * dtype.itemsize
    have = path.stat().st_size - offset
    if have < need:
        raise DataFileError(f"{path} is truncated: its header declares {dtype} {tuple(shape)} ({_human(need)}) but "
                            f"only {_human(have)} of data follow; the file was not written completely.")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataFileError(f"{path}: cannot read the array ({_first_line(error)}).") from error


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


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


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


def _dicom_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True, force=path.suffix.lower() == ".dcm")
    except Exception as error:  # noqa: BLE001 - pydicom raises many types for a bad file
        raise DataFileError(f"{path} is not a readable DICOM file ({_first_line(error)}).") from error


def _int(ds, key: str, default: int) -> int:
    try:
        value = ds.get(key, default)
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise DataFileError(f"{ds.filename}: its DICOM {key} is not a number ({ds.get(key)!r}).") from None


def _check_dicom_header(path: Path, ds, budget: MemoryBudget, files: int = 1) -> int:
    """Budget check from the declared Rows x Columns x frames x samples; returns the frame count."""
    if "Rows" not in ds or "Columns" not in ds:
        raise DataFileError(f"{path} holds no image (no Rows/Columns: is it a DICOMDIR, a report or a "
                            f"presentation state?).")
    frames = _int(ds, "NumberOfFrames", 1) or 1
    rows, cols, samples = _int(ds, "Rows", 0), _int(ds, "Columns", 0), _int(ds, "SamplesPerPixel", 1)
    bits = _int(ds, "BitsAllocated", 8)
    shape = (files * frames, rows, cols) + ((samples,) if samples > 1 else ())
    budget.check(path, shape, max(1, (bits + 7) // 8) + (4 if bits > 8 else 0), "pixels")
    if rows < 1 or cols < 1:
        raise InputImageError(f"{path}: its header declares a {rows} x {cols} image; there are no pixels to read.")
    return frames


def _read_dicom(path: Path, budget: MemoryBudget) -> LoadedImage:
    from .cine import read_cine

    ds = _dicom_header(path)
    frames = _check_dicom_header(path, ds, budget)
    if frames > 1:
        cine = read_cine(path)
        return LoadedImage(cine.frames, "cine", path, "dicom", geometry=cine.frame_geometry(), cine=cine,
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


_BITS = re.compile(r"(\d+)-bit")


def _sitk_itemsize(sitk, pixel_id: int) -> int:
    match = _BITS.search(sitk.GetPixelIDValueAsString(pixel_id))
    return int(match.group(1)) // 8 if match else 8


def load_sitk_image(path: Path, budget: MemoryBudget, series_id: str | None = None):
    """The SimpleITK image of a file or a DICOM series folder, its declared size checked against the budget
    before the pixels are read."""
    import SimpleITK as sitk

    if path.is_dir():
        return _load_dicom_series(path, budget, series_id)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise DataFileError(f"{path} is not an image file SonoSAM can read ({_first_line(error)}); give PNG, JPEG, "
                            f"TIFF, DICOM, NRRD, NIfTI, MHA or .npy.") from error
    size = tuple(reversed(reader.GetSize()))
    components = reader.GetNumberOfComponents()
    budget.check(path, size + ((components,) if components > 1 else ()), _sitk_itemsize(sitk, reader.GetPixelID()),
                 "voxels")
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise DataFileError(f"{path}: cannot decode its pixels ({_first_line(error)}); the file may be truncated "
                            f"or corrupt.") from error
    if path.name.lower().endswith((".nii", ".nii.gz")):
        bad = _nifti_nonfinite(path)
        if bad:
            raise InputImageError(f"{path} has {bad} NaN or infinite voxels (SimpleITK would silently read them as "
                                  f"0); replace them (e.g. numpy.nan_to_num) and save it again.")
    return image


_NIFTI_FLOATS = {16: np.float32, 64: np.float64}


def _nifti_nonfinite(path: Path) -> int:
    """NaN/Inf voxels in a float NIfTI file, counted in its raw data: ITK's NIfTI reader turns them into 0."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(348)
            endian = "<" if int.from_bytes(header[:4], "little") == 348 else ">"
            if int.from_bytes(header[:4], "little" if endian == "<" else "big") != 348:
                return 0  # NIfTI-2 or unknown: nothing to add to what SimpleITK read
            datatype = int(np.frombuffer(header[70:72], endian + "i2")[0])
            if datatype not in _NIFTI_FLOATS:
                return 0
            offset = int(np.frombuffer(header[108:112], endian + "f4")[0])
            handle.read(max(0, offset - 348))
            dtype = np.dtype(_NIFTI_FLOATS[datatype]).newbyteorder(endian)
            bad = 0
            while chunk := handle.read(dtype.itemsize * (1 << 20)):
                usable = len(chunk) - len(chunk) % dtype.itemsize
                bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(chunk[:usable], dtype))))
            return bad
    except (OSError, EOFError, ValueError):
        return 0  # SimpleITK read it; a damaged tail was its business


def _read_sitk(path: Path, budget: MemoryBudget, fmt: str) -> LoadedImage:
    return _from_sitk(load_sitk_image(path, budget), path, fmt)


def _from_sitk(image, path: Path, fmt: str) -> LoadedImage:
    import SimpleITK as sitk

    from .volumes import _not_3d_message

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


def _load_dicom_series(path: Path, budget: MemoryBudget, series_id: str | None = None):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(path))
    if not ids:
        raise DataFileError(f"{path} is a folder without a DICOM series; give an image file or a DICOM folder.")
    if series_id is not None and series_id not in ids:
        raise DataFileError(f"{path} has no DICOM series {series_id}; it has {', '.join(ids)}.")
    files = {sid: reader.GetGDCMSeriesFileNames(str(path), sid) for sid in ids}
    chosen = series_id or max(ids, key=lambda sid: len(files[sid]))
    first = Path(files[chosen][0])
    _check_dicom_header(first, _dicom_header(first), budget, files=len(files[chosen]))
    reader.SetFileNames(files[chosen])
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise DataFileError(f"Cannot read the DICOM series in {path}: {_first_line(error)}") from error


def _read_dicom_series(path: Path, budget: MemoryBudget) -> LoadedImage:
    return _from_sitk(_load_dicom_series(path, budget), path, "dicom-series")


def _is_segmentation(path: Path) -> bool:
    from .segmentations import check_seg_header

    return check_seg_header(path) is not None


def _read_seg_nrrd(path: Path, budget: MemoryBudget) -> LoadedImage:
    from .segmentations import check_seg_header, read_segmentation

    header = check_seg_header(path)
    sizes = [int(s) for s in header.get("sizes", [])]
    budget.check(path, sizes, 2, "voxels")
    seg = read_segmentation(path)
    return LoadedImage(seg.labelmap, "volume", path, "seg.nrrd", geometry=seg.geometry,
                       notes=[f"segments: {', '.join(s.name for s in seg.segments)}"])
