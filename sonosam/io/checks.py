"""The input checks every reader shares (the lowest layer of the input gate, `gate.read_image` on top):
files before decoding (exists, is a file, not empty, header-declared size against the memory budget) and
arrays after (numeric, not empty, finite). Each refusal is one `SonoSAMError` line naming the file."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataFileError, InputImageError, SonoSAMError
from .atomic import PathLike

DEFAULT_MAX_BYTES = 4 << 30


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


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


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
        bad, held, declared = _nifti_scan(path)
        if held < declared:
            raise DataFileError(f"{path} is truncated: its voxel data end before the {declared} bytes its header "
                                "declares (SimpleITK would fill the rest with 0); the file was not written completely: "
                                "export or copy it again.")
        if bad:
            raise InputImageError(f"{path} has {bad} NaN or infinite voxels (SimpleITK would silently read them as "
                                  f"0); replace them (e.g. numpy.nan_to_num) and save it again.")
    return image


_NIFTI_FLOATS = {16: np.float32, 64: np.float64}
_NIFTI_ITEMSIZE = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8, 1536: 16,
                   1792: 16, 2048: 32, 2304: 4}   # NIfTI-1 datatype code -> bytes per voxel


def _nifti_scan(path: Path) -> tuple[int, int, int]:
    """(NaN/Inf voxels, bytes of voxel data the file holds, bytes its header declares) of a NIfTI-1 file, from its
    raw data: ITK's NIfTI reader turns NaN/Inf into 0 and reads a truncated file as if the rest were 0. Unknown
    headers (NIfTI-2) give (0, 0, 0): nothing to add to what SimpleITK read."""
    import gzip
    import zlib

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    bad = held = declared = 0
    try:
        with opener(path, "rb") as handle:
            header = handle.read(348)
            endian = "<" if int.from_bytes(header[:4], "little") == 348 else ">"
            if len(header) < 348 or int.from_bytes(header[:4], "little" if endian == "<" else "big") != 348:
                return 0, 0, 0
            dims = np.frombuffer(header[40:56], endian + "i2").astype(np.int64)
            datatype, bitpix = (int(v) for v in np.frombuffer(header[70:74], endian + "i2"))
            itemsize = _NIFTI_ITEMSIZE.get(datatype, bitpix // 8)   # ITK goes by the datatype, not bitpix
            declared = int(np.prod(dims[1:1 + max(0, min(int(dims[0]), 7))])) * itemsize
            offset = int(np.frombuffer(header[108:112], endian + "f4")[0])
            if opener is open and datatype not in _NIFTI_FLOATS:
                return 0, max(0, path.stat().st_size - offset), declared
            handle.read(max(0, offset - 348))
            dtype = np.dtype(_NIFTI_FLOATS.get(datatype, np.uint8)).newbyteorder(endian)
            while held < declared and (chunk := handle.read(min(dtype.itemsize * (1 << 20), declared - held))):
                held += len(chunk)
                if datatype in _NIFTI_FLOATS:
                    usable = len(chunk) - len(chunk) % dtype.itemsize
                    bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(chunk[:usable], dtype))))
            return bad, held, declared
    except (EOFError, zlib.error, gzip.BadGzipFile):   # a compressed stream cut short: what it held is what counts
        return bad, held, declared
    except (OSError, ValueError):
        return 0, 0, 0  # SimpleITK read it


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
    _check_slice_steps(path, files[chosen])
    reader.SetFileNames(files[chosen])
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise DataFileError(f"Cannot read the DICOM series in {path}: {_first_line(error)}") from error



def _check_slice_steps(folder: Path, files) -> None:
    """Refuse a series whose slices are not evenly spaced (a missing file, a second stack): ITK reads it with one
    spacing, so every slice after a gap would lie in the wrong place."""
    positions = []
    for name in files:
        ds = _dicom_header(Path(name))
        try:
            row_col = np.asarray(ds.ImageOrientationPatient, float).reshape(2, 3)
            positions.append(float(np.asarray(ds.ImagePositionPatient, float) @ np.cross(row_col[0], row_col[1])))
        except (AttributeError, TypeError, ValueError):
            return   # no position to check (a secondary capture, a single multi-frame file): ITK's reading stands
    steps = np.abs(np.diff(positions))
    if len(steps) < 2:
        return
    fix = "SonoSAM would place its slices wrongly. Export the complete series (or resample it to even spacing)."
    if steps.min() < 1e-3:
        at = int(np.argmin(steps))
        raise DataFileError(f"The DICOM series in {folder} has two files at one position (slices {at} and {at + 1}: two "
                            f"stacks in one series?); {fix}")
    typical = float(np.median(steps)) if len(steps) > 2 else float(steps.min())
    # a missing file doubles a step; positions written with few decimals move steps by a fraction of one
    uneven = np.flatnonzero(np.abs(steps - typical) > 0.4 * typical)
    if len(uneven):
        at = int(uneven[0])
        raise DataFileError(f"The DICOM series in {folder} is not evenly spaced: slices {at} and {at + 1} are "
                            f"{steps[at]:.2f} mm apart where the others are {typical:.2f} mm (a missing file?); {fix}")


def _not_3d_message(shape, components: int = 1, hint: str = "") -> str:
    if components > 1:
        return (f"The image has {components} components per voxel (shape {tuple(shape)}, e.g. RGB or a vector "
                f"field); SonoSAM segments scalar images. Convert it to grayscale or pick one component "
                f"(e.g. sitk.VectorIndexSelectionCast(image, 0)) first{hint}.")
    if len(shape) == 4:
        return (f"The image is 4D (shape {tuple(shape)}, e.g. a time series or multi-channel volume); SonoSAM "
                f"segments one 3D volume at a time. Extract one time point or channel first "
                f"(e.g. array[t] or sitk.Extract) and segment that{hint}.")
    return f"A volume must be 3D (k, j, i); got an array of shape {tuple(shape)}{hint}."
