"""Reading images and writing results, with their geometry, in the formats Slicer and researchers use.

One home for each thing:

- `Geometry` / `Volume`, `read_volume`, `write_volume`: NRRD, NIfTI, MHA and DICOM series via SimpleITK.
  Arrays are indexed [k, j, i] (z, y, x) as `sitk.GetArrayFromImage` gives them; geometry is ITK's LPS,
  with `ijk_to_ras()` for Slicer, which works in RAS.
- `Cine`, `read_cine`: multi-frame ultrasound DICOM -> uint8 grayscale frames, physical spacing from
  SequenceOfUltrasoundRegions (SimpleITK reports 1 mm there), frame time.
- `Segment` / `Segmentation`, `write_segmentation`, `read_segmentation`: `.seg.nrrd` as Slicer writes it
  (through slicerio), plain labelmaps (`.nii.gz`, `.nrrd`, `.mha`) and 2D `.png` masks.
- `save_overlay_png`: image + masks + prompt markers, for humans to check a result at a glance.

Every write is atomic (temp file in the target folder, then rename) and never replaces an existing file
unless `overwrite=True`, so an interrupted or failed run leaves either the old file or nothing.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import DataFileError, InputImageError, SonoSAMError

PathLike = str | os.PathLike

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Slicer's first GenericAnatomyColors entries, so that default segments look as they do in Slicer.
DEFAULT_COLORS: tuple[tuple[float, float, float], ...] = tuple(
    (r / 255, g / 255, b / 255) for r, g, b in [
        (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
        (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0)])


# ----------------------------------------------------------------------------------------------- geometry

@dataclass
class Geometry:
    """Where voxels lie in patient space, in ITK's LPS convention (what SimpleITK and DICOM use).

    `direction` columns are the unit vectors of the i, j, k axes; a point is
    `origin + direction @ (spacing * ijk)`."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self):
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) == 2:  # a 2D image: one slice, 1 mm thick
            spacing = spacing + (1.0,)
        origin = tuple(float(o) for o in self.origin) + (0.0,) * (3 - len(self.origin))
        direction = np.asarray(self.direction, dtype=float)
        if direction.shape == (2, 2):
            direction = np.block([[direction, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
        if direction.size == 9:
            direction = direction.reshape(3, 3)
        if len(spacing) != 3 or len(origin) != 3 or direction.shape != (3, 3):
            raise InputImageError(f"Geometry needs 3 spacings, 3 origin values and a 3x3 direction; got "
                                  f"spacing={self.spacing}, origin={self.origin}, direction shape {direction.shape}.")
        if not all(np.isfinite(s) and s > 0 for s in spacing) or not np.all(np.isfinite(direction)):
            raise InputImageError(f"Geometry spacing must be positive and finite; got {spacing}.")
        self.spacing, self.origin, self.direction = spacing, origin, direction

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix from voxel index (i, j, k, 1) to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction * np.asarray(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix from voxel index to RAS millimetres, as Slicer's `GetIJKToRASMatrix` gives."""
        return _LPS_TO_RAS @ self.ijk_to_lps()

    @classmethod
    def from_ijk_to_lps(cls, matrix: np.ndarray) -> Geometry:
        matrix = np.asarray(matrix, dtype=float)
        spacing = np.linalg.norm(matrix[:3, :3], axis=0)
        return cls(tuple(spacing), tuple(matrix[:3, 3]), matrix[:3, :3] / spacing)

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray) -> Geometry:
        """From Slicer's IJK-to-RAS matrix (e.g. `volumeNode.GetIJKToRASMatrix`) to LPS geometry."""
        return cls.from_ijk_to_lps(_LPS_TO_RAS @ np.asarray(matrix, dtype=float))

    @classmethod
    def from_image(cls, image) -> Geometry:
        """From a SimpleITK image (2D images get a 1 mm third axis)."""
        dim = image.GetDimension()
        return cls(image.GetSpacing(), image.GetOrigin(), np.asarray(image.GetDirection()).reshape(dim, dim))

    def apply_to(self, image) -> None:
        """Set this geometry on a 3D SimpleITK image."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))

    def allclose(self, other: Geometry, atol: float = 1e-5) -> bool:
        return (np.allclose(self.spacing, other.spacing, atol=atol) and np.allclose(self.origin, other.origin, atol=atol)
                and np.allclose(self.direction, other.direction, atol=atol))


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


def _sitk():
    import SimpleITK as sitk
    return sitk


def _image_to_volume(image, path: PathLike) -> Volume:
    sitk = _sitk()
    hint = "; for an ultrasound cine use sonosam.io.read_cine" if str(path).lower().endswith(".dcm") else ""
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


def read_volume(path: PathLike, series_id: str | None = None) -> Volume:
    """Read a NRRD/NIfTI/MHA (or any SimpleITK format) file, or a folder holding a DICOM series.

    A folder with several series reads the one with the most files unless `series_id` names one."""
    sitk = _sitk()
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path} does not exist.")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            ids = reader.GetGDCMSeriesIDs(str(path))
            if not ids:
                raise DataFileError(f"{path} is a folder without a DICOM series; give a volume file or a DICOM folder.")
            if series_id is not None and series_id not in ids:
                raise DataFileError(f"{path} has no DICOM series {series_id}; it has {', '.join(ids)}.")
            files = {sid: reader.GetGDCMSeriesFileNames(str(path), sid) for sid in ids}
            chosen = series_id or max(ids, key=lambda sid: len(files[sid]))
            reader.SetFileNames(files[chosen])
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise DataFileError(f"Cannot read {path} as an image: {str(error).strip().splitlines()[-1]}") from error
    return _image_to_volume(image, path)


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
    image = sitk.GetImageFromArray(array)
    volume.geometry.apply_to(image)
    with _atomic_output(path, overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return Path(path)


# ------------------------------------------------------------------------------------------- atomic write

def _suffix(path: PathLike) -> str:
    name = Path(path).name.lower()
    for compound in (".seg.nrrd", ".seq.nrrd", ".nii.gz"):
        if name.endswith(compound):
            return compound
    return Path(name).suffix


def _exists_error(path: Path) -> DataFileError:
    return DataFileError(f"{path} already exists; pass overwrite=True (command line: --overwrite) to replace it, "
                         f"or choose another output name.")


@contextlib.contextmanager
def _atomic_output(path: PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a temp path beside `path` (same extension, so writers pick the same format); publish it with one
    rename when the block succeeds, delete it otherwise. Without `overwrite`, an existing file is an error,
    checked again at publication time (a hard link fails if the name appeared meanwhile)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise _exists_error(path)
    if not path.parent.is_dir():
        raise DataFileError(f"Cannot write {path}: the folder {path.parent} does not exist.")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{_suffix(path)}"
    try:
        try:
            yield tmp
        except SonoSAMError:
            raise
        except Exception as error:
            raise DataFileError(f"Writing {path} failed ({type(error).__name__}: {error}); nothing was written.") from error
        if not tmp.exists():
            raise DataFileError(f"Writing {path} produced no file; nothing was written.")
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise _exists_error(path) from None
            except OSError:  # file systems without hard links: check, then rename
                if path.exists():
                    raise _exists_error(path) from None
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- cine

@dataclass
class Cine:
    """An ultrasound loop: `frames` (T, H, W) uint8 grayscale (luminance), plus physical calibration.

    `spacing_mm` is (x, y) per pixel; when the file gives no usable calibration it is (1.0, 1.0) and
    `spacing_known` is False. `rgb` (T, H, W, 3) is decoded from the file only when asked for, so a
    120-frame 640x480 loop costs 37 MB rather than 147 MB."""

    frames: np.ndarray
    spacing_mm: tuple[float, float] = (1.0, 1.0)
    spacing_known: bool = False
    spacing_source: str = "unknown"
    frame_time_ms: float | None = None
    photometric: str = "MONOCHROME2"
    source: Path | None = None
    notes: list[str] = field(default_factory=list)
    _rgb: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self.frames = np.asarray(self.frames)
        if self.frames.ndim != 3 or self.frames.dtype != np.uint8:
            raise InputImageError(f"Cine frames must be a (T, H, W) uint8 array; got {self.frames.dtype} "
                                  f"{self.frames.shape}.")

    @property
    def n_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def is_color(self) -> bool:
        return not self.photometric.startswith("MONOCHROME")

    @property
    def fps(self) -> float | None:
        return 1000.0 / self.frame_time_ms if self.frame_time_ms else None

    @property
    def rgb(self) -> np.ndarray:
        """(T, H, W, 3) uint8 colour frames, decoded from the source on first use and then kept.

        For a grayscale loop this is a read-only broadcast view of `frames` (no copy)."""
        if self._rgb is None:
            if not self.is_color or self.source is None:
                return np.broadcast_to(self.frames[..., np.newaxis], self.frames.shape + (3,))
            self._rgb = _decode_cine(self.source, keep_rgb=True)[1]
        return self._rgb

    def frame_geometry(self) -> Geometry:
        """Geometry of one frame as a one-slice volume (for writing masks with millimetre spacing)."""
        return Geometry((self.spacing_mm[0], self.spacing_mm[1], 1.0))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, the Y of DICOM's YBR_FULL, so grey pixels keep their value exactly."""
    y = rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587) + rgb[..., 2] * np.float32(0.114)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _decode_cine(path: Path, keep_rgb: bool):
    """Decode frame by frame (peak memory: the outputs plus one frame).
    Returns (dataset, rgb (T, H, W, 3) or None, gray (T, H, W) uint8, the file's photometric interpretation)."""
    import pydicom
    from pydicom import pixels

    try:
        ds = pydicom.dcmread(str(path))
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as error:
        raise DataFileError(f"{path} is not a readable DICOM file ({error}).") from error
    if "PixelData" not in ds:
        raise DataFileError(f"{path} holds no pixel data (is it a DICOMDIR or a report?).")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    rgb = np.empty((n, rows, cols, 3), np.uint8) if keep_rgb and photometric not in ("MONOCHROME1", "MONOCHROME2") else None
    gray = np.empty((n, rows, cols), np.uint8)
    wide: np.ndarray | None = None
    try:
        decoder = pixels.get_decoder(ds.file_meta.TransferSyntaxUID)
        # pydicom 3 turns YBR into RGB itself (as_rgb=True) and reports in `meta` what it returns:
        # convert colour at most once, and only when the decoder did not.
        for t, (frame, meta) in enumerate(decoder.iter_array(ds, as_rgb=True)):
            out_pi = str(meta.get("photometric_interpretation", photometric))
            if frame.ndim == 3 and frame.shape[-1] == 3:
                if out_pi.startswith("YBR"):
                    frame = pixels.convert_color_space(frame, out_pi, "RGB")
                gray[t] = _luminance(frame)
                if rgb is not None:
                    rgb[t] = frame
            elif out_pi == "PALETTE COLOR":
                frame = pixels.apply_color_lut(frame, ds)
                frame = (frame >> 8).astype(np.uint8) if frame.dtype.itemsize > 1 else frame
                gray[t] = _luminance(frame)
                if rgb is not None:
                    rgb[t] = frame
            elif frame.dtype == np.uint8:
                gray[t] = 255 - frame if out_pi == "MONOCHROME1" else frame
            else:  # 12/16-bit grayscale: keep, scale the whole loop to 0..255 at the end
                if wide is None:
                    wide = np.empty((n, rows, cols), np.float32)
                wide[t] = frame
    except SonoSAMError:
        raise
    except Exception as error:  # missing JPEG plugin, truncated data...
        raise DataFileError(f"Cannot decode the pixel data of {path} ({ds.file_meta.TransferSyntaxUID.name}): "
                            f"{error}. For JPEG-compressed loops install pylibjpeg and pylibjpeg-libjpeg.") from error
    if wide is not None:
        lo, hi = float(wide.min()), float(wide.max())
        wide = (wide - lo) * (255.0 / (hi - lo)) if hi > lo else wide * 0
        if photometric == "MONOCHROME1":
            wide = 255 - wide
        gray = np.rint(wide).astype(np.uint8)
    return ds, rgb, gray, photometric


def _ultrasound_spacing(ds, rows: int, cols: int, notes: list[str]) -> tuple[float, float] | None:
    """(x, y) mm per pixel from the largest 2D tissue region calibrated in cm (units code 3)."""
    best, best_area = None, -1
    for region in ds.get("SequenceOfUltrasoundRegions", []) or []:
        if region.get("PhysicalUnitsXDirection") != 3 or region.get("PhysicalUnitsYDirection") != 3:
            continue
        if region.get("RegionSpatialFormat", 1) != 1 or not region.get("PhysicalDeltaX") or not region.get("PhysicalDeltaY"):
            continue
        x0, y0 = int(region.get("RegionLocationMinX0", 0)), int(region.get("RegionLocationMinY0", 0))
        x1, y1 = int(region.get("RegionLocationMaxX1", cols - 1)), int(region.get("RegionLocationMaxY1", rows - 1))
        if x1 >= cols or y1 >= rows:
            notes.append(f"Ultrasound region ({x0},{y0})-({x1},{y1}) lies outside the {cols}x{rows} image (the "
                         f"frames were probably resized after calibration); its spacing "
                         f"{abs(float(region.PhysicalDeltaX)) * 10:.4g} mm is not used.")
            continue
        area = (x1 - x0 + 1) * (y1 - y0 + 1)
        if area > best_area:
            best_area = area
            best = (abs(float(region.PhysicalDeltaX)) * 10.0, abs(float(region.PhysicalDeltaY)) * 10.0)
    return best


def _pixel_spacing(ds) -> tuple[float, float] | None:
    """(x, y) mm from PixelSpacing (stored row spacing first), plain or in the shared functional groups."""
    spacing = ds.get("PixelSpacing")
    if spacing is None:
        with contextlib.suppress(AttributeError, IndexError, KeyError):
            spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    if spacing is None or len(spacing) != 2 or min(float(s) for s in spacing) <= 0:
        return None
    return float(spacing[1]), float(spacing[0])


def _frame_time_ms(ds) -> float | None:
    if ds.get("FrameTime"):
        return float(ds.FrameTime)
    vector = ds.get("FrameTimeVector")
    if vector is not None and len(vector) > 1:  # first entry is 0, the rest are increments in ms
        return float(np.median([float(v) for v in vector[1:]]))
    if ds.get("CineRate"):
        return 1000.0 / float(ds.CineRate)
    if ds.get("RecommendedDisplayFrameRate"):
        return 1000.0 / float(ds.RecommendedDisplayFrameRate)
    return None


def read_cine(path: PathLike, *, keep_rgb: bool = False) -> Cine:
    """Read a (multi- or single-frame) ultrasound DICOM as grayscale frames with mm spacing and frame time.

    `keep_rgb=True` keeps the colour frames from this one decode; otherwise `Cine.rgb` decodes them on
    first use."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path} does not exist or is not a file.")
    ds, rgb, gray, photometric = _decode_cine(path, keep_rgb)
    notes: list[str] = []
    rows, cols = gray.shape[1:]
    spacing, source = _ultrasound_spacing(ds, rows, cols, notes), "SequenceOfUltrasoundRegions"
    if spacing is None:
        spacing, source = _pixel_spacing(ds), "PixelSpacing"
    known = spacing is not None
    if not known:
        spacing, source = (1.0, 1.0), "unknown"
        notes.append("No physical calibration in the file: spacing is 1.0 (pixels), not millimetres.")
    if int(ds.get("BitsStored", 8)) > 8:
        notes.append(f"{ds.BitsStored}-bit pixels were scaled linearly (loop min..max) to 0..255.")
    frame_time = _frame_time_ms(ds)
    if frame_time is None and gray.shape[0] > 1:
        notes.append("No frame time in the file (FrameTime, FrameTimeVector, CineRate, RecommendedDisplayFrameRate).")
    return Cine(gray, spacing, known, source, frame_time, photometric, path, notes, rgb)


# ----------------------------------------------------------------------------------------- segmentation

@dataclass
class Segment:
    """One structure: its name, display colour (0-1 floats, as Slicer stores them), label value and layer."""

    name: str
    color: tuple[float, float, float] | None = None
    label: int | None = None  # None: assigned when written (1, 2, ... in order)
    layer: int = 0
    id: str | None = None

    def __post_init__(self):
        if self.color is not None:
            color = tuple(float(c) for c in self.color)
            if len(color) != 3 or min(color) < 0:
                raise InputImageError(f"Segment {self.name!r}: a colour is (r, g, b); got {self.color}.")
            if max(color) > 1:  # 0-255 given
                color = tuple(c / 255.0 for c in color)
            self.color = color
        self.label = None if self.label is None else int(self.label)
        self.layer = int(self.layer)

    @classmethod
    def coerce(cls, spec: Segment | dict[str, Any]) -> Segment:
        if isinstance(spec, Segment):
            return spec
        known = {k: spec[k] for k in ("name", "color", "label", "layer", "id") if k in spec}
        return cls(**known)


@dataclass
class Segmentation:
    """Labels on a voxel grid: `labelmap` [k, j, i], or [layer, k, j, i] when segments overlap (as in Slicer)."""

    labelmap: np.ndarray
    geometry: Geometry
    segments: list[Segment]

    def mask(self, segment: str | int) -> np.ndarray:
        """Boolean [k, j, i] mask of a segment given by name or index in `segments`."""
        if isinstance(segment, str):
            found = [s for s in self.segments if s.name == segment or s.id == segment]
            if not found:
                raise KeyError(f"No segment named {segment!r}; there are {[s.name for s in self.segments]}.")
            seg = found[0]
        else:
            seg = self.segments[segment]
        layers = self.labelmap if self.labelmap.ndim == 4 else self.labelmap[np.newaxis]
        return layers[seg.layer] == seg.label


def _label_dtype(max_label: int):
    return np.uint8 if max_label <= 255 else np.uint16 if max_label <= 65535 else np.int32


def _as_layers(labelmap_or_masks, segments) -> tuple[np.ndarray, list[Segment]]:
    """Normalise the input to ([layer, k, j, i] integer labels, segments with label and layer set)."""
    specs = [Segment.coerce(s) for s in segments] if segments is not None else None
    is_masks = isinstance(labelmap_or_masks, (list, tuple)) or (
        isinstance(labelmap_or_masks, np.ndarray) and labelmap_or_masks.dtype == bool and labelmap_or_masks.ndim == 4)
    if is_masks:
        masks = [np.asarray(m) for m in labelmap_or_masks]
        masks = [m[np.newaxis] if m.ndim == 2 else m for m in masks]
        if not masks or any(m.ndim != 3 or m.shape != masks[0].shape for m in masks):
            raise InputImageError(f"Masks must be 2D or 3D arrays of one shape; got shapes {[m.shape for m in masks]}.")
        if any(m.dtype.kind not in "bui" or m.max(initial=0) > 1 or m.min(initial=0) < 0 for m in masks):
            raise InputImageError("Masks must be boolean (or 0/1) arrays; pass a labelmap array for label values.")
        if specs is None:
            specs = [Segment(f"Segment_{i + 1}", label=i + 1) for i in range(len(masks))]
        if len(specs) != len(masks):
            raise InputImageError(f"{len(masks)} masks but {len(specs)} segment descriptions; give one per mask.")
        labels = [s.label if s.label is not None else i + 1 for i, s in enumerate(specs)]
        if len(set(labels)) != len(labels) or min(labels) < 1:
            raise InputImageError(f"Segment label values must be distinct and positive; got {labels}.")
        layers: list[np.ndarray] = []
        dtype = _label_dtype(max(labels))
        out = []
        for mask, spec, label in zip(masks, specs, labels):
            mask = mask.astype(bool)
            layer = next((i for i, lay in enumerate(layers) if not lay[mask].any()), len(layers))
            if layer == len(layers):
                layers.append(np.zeros(mask.shape, dtype))
            layers[layer][mask] = label
            out.append(Segment(spec.name, spec.color, label, layer, spec.id))
        return np.stack(layers), out
    array = np.asarray(labelmap_or_masks)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "ui":
        raise InputImageError(f"A labelmap must hold integer (or boolean) values; got {array.dtype}. "
                              f"Threshold or round it first.")
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise InputImageError(_not_3d_message(array.shape) + " For several overlapping masks pass a list of masks.")
    if array.size and array.min() < 0:
        raise InputImageError("A labelmap cannot hold negative label values.")
    present = [int(v) for v in np.unique(array) if v != 0]
    if specs is None:
        specs = [Segment(f"Segment_{v}", label=v) for v in present]
    specs = [s if s.label is not None else Segment(s.name, s.color, i + 1, 0, s.id) for i, s in enumerate(specs)]
    missing = sorted(set(present) - {s.label for s in specs})
    if missing:
        raise InputImageError(f"Label values {missing} in the labelmap have no segment description; add them to "
                              f"`segments` (name, color, label) or set those voxels to 0.")
    max_label = max([s.label for s in specs] + present + [1])
    return array.astype(_label_dtype(max_label), copy=False)[np.newaxis], [
        Segment(s.name, s.color, s.label, 0, s.id) for s in specs]


_SEG_FORMATS = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii", ".mha", ".png")


def write_segmentation(path: PathLike, labelmap_or_masks, geometry: Geometry | None = None,
                       segments: Sequence[dict | Segment] | None = None, *, overwrite: bool = False) -> Path:
    """Write segments to `.seg.nrrd` (Slicer's segmentation file, via slicerio), a plain labelmap
    (`.nii.gz`, `.nii`, `.nrrd`, `.mha`) or a 2D `.png` mask.

    `labelmap_or_masks` is an integer labelmap [k, j, i] (or [y, x]; 0 = background), a boolean mask, or a
    list of boolean masks, one per segment (they may overlap; `.seg.nrrd` then stores layers as Slicer
    does). `segments`: [{"name", "color" (0-1 or 0-255), "label"}, ...]; defaults to Segment_<label>.
    A one-segment `.png` is written 0/255 so that it is visible; several segments keep their label values."""
    kind = _suffix(path)
    if kind not in _SEG_FORMATS:
        raise DataFileError(f"Cannot write a segmentation to {path}: use one of {', '.join(_SEG_FORMATS)}.")
    geometry = geometry or Geometry()
    layers, segs = _as_layers(labelmap_or_masks, segments)
    for index, seg in enumerate(segs):
        if seg.color is None:
            seg.color = DEFAULT_COLORS[index % len(DEFAULT_COLORS)]
    if kind == ".seg.nrrd":
        import slicerio

        voxels = layers[0] if layers.shape[0] == 1 else layers
        used_ids: set[str] = set()
        header_segments = []
        for index, seg in enumerate(segs):
            seg_id = seg.id or f"Segment_{index + 1}"
            if seg_id in used_ids:
                raise InputImageError(f"Segment ID {seg_id!r} is used twice.")
            used_ids.add(seg_id)
            nonzero = np.nonzero(layers[seg.layer] == seg.label)  # k, j, i
            extent = [int(v) for axis in reversed(nonzero) for v in (axis.min(), axis.max())] if nonzero[0].size \
                else [0, -1, 0, -1, 0, -1]
            header_segments.append({"id": seg_id, "name": seg.name, "nameAutoGenerated": False,
                                    "color": [round(c, 6) for c in seg.color], "colorAutoGenerated": False,
                                    "labelValue": seg.label, "layer": seg.layer, "extent": extent})
        # slicerio's writer takes i, j, k (Fortran) order; ours is k, j, i.
        ijk = voxels.transpose(2, 1, 0) if voxels.ndim == 3 else voxels.transpose(0, 3, 2, 1)
        segmentation = {"voxels": ijk, "ijkToLPS": geometry.ijk_to_lps(), "segments": header_segments,
                        "containedRepresentationNames": ["Binary labelmap"],
                        "masterRepresentation": "Binary labelmap", "referenceImageExtentOffset": [0, 0, 0]}
        with _atomic_output(path, overwrite) as tmp:
            slicerio.write_segmentation(str(tmp), segmentation)
        return Path(path)
    if layers.shape[0] > 1:
        raise InputImageError(f"The segments overlap, which {kind} cannot store (one label per voxel); write "
                              f".seg.nrrd, or one file per segment.")
    labelmap = layers[0]
    if kind == ".png":
        if labelmap.shape[0] != 1:
            raise InputImageError(f"A .png holds one 2D mask; this labelmap has {labelmap.shape[0]} slices "
                                  f"(shape {labelmap.shape}). Write .nii.gz or .seg.nrrd instead.")
        if labelmap.max(initial=0) > 255:
            raise InputImageError("A .png mask holds label values up to 255; write .nii.gz or .seg.nrrd instead.")
        from PIL import Image

        image2d = labelmap[0].astype(np.uint8)
        if len(segs) == 1:
            image2d = np.where(image2d == segs[0].label, 255, 0).astype(np.uint8)
        with _atomic_output(path, overwrite) as tmp:
            Image.fromarray(image2d, mode="L").save(tmp, format="PNG")
        return Path(path)
    return write_volume(Volume(labelmap, geometry), path, overwrite=overwrite)


def read_segmentation(path: PathLike) -> Segmentation:
    """Read `.seg.nrrd` (names, colours, layers kept, via slicerio) or a plain labelmap (.nii.gz, .nrrd,
    .mha, .png: one segment per label value present)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path} does not exist or is not a file.")
    if _suffix(path) in (".seg.nrrd", ".nrrd"):
        import nrrd
        import slicerio

        try:
            header = nrrd.read_header(str(path))
        except Exception as error:
            raise DataFileError(f"{path} is not a readable NRRD file: {error}") from error
        if any(key.startswith("Segment0_") for key in header):
            try:
                seg = slicerio.read_segmentation(str(path))
            except Exception as error:
                raise DataFileError(f"{path} is not a segmentation Slicer could read: {error}") from error
            voxels = np.asarray(seg["voxels"])
            labelmap = voxels.transpose(2, 1, 0) if voxels.ndim == 3 else voxels.transpose(0, 3, 2, 1)
            segments = [Segment(s.get("name", s.get("id", f"Segment_{i + 1}")), s.get("color"),
                                s.get("labelValue", 1), s.get("layer", 0), s.get("id"))
                        for i, s in enumerate(seg.get("segments", []))]
            return Segmentation(np.ascontiguousarray(labelmap), Geometry.from_ijk_to_lps(seg["ijkToLPS"]), segments)
    volume = read_volume(path)
    if volume.array.dtype.kind not in "ui":
        raise DataFileError(f"{path} holds {volume.array.dtype} values, not integer labels.")
    labels = [int(v) for v in np.unique(volume.array) if v != 0]
    segments = [Segment(f"Segment_{v}", DEFAULT_COLORS[i % len(DEFAULT_COLORS)], v) for i, v in enumerate(labels)]
    return Segmentation(volume.array, volume.geometry, segments)


# ------------------------------------------------------------------------------------------------ overlay

def _to_rgb8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise InputImageError(f"An overlay needs a 2D grayscale (H, W) or colour (H, W, 3) image; got {image.shape}.")
    if image.dtype != np.uint8:
        finite = np.isfinite(image) if image.dtype.kind == "f" else np.ones(image.shape, bool)
        lo, hi = (float(image[finite].min()), float(image[finite].max())) if finite.any() else (0.0, 0.0)
        image = np.where(finite, image, lo).astype(np.float32)
        image = np.rint((image - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(image)
        image = image.astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., np.newaxis], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (image borders count as outside)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def save_overlay_png(path: PathLike, image2d_or_rgb: np.ndarray, masks=None, colors=None, points=None,
                     labels=None, box=None, *, alpha: float = 0.4, overwrite: bool = False) -> Path:
    """Write an RGB PNG of the image with masks blended and outlined, and the prompts drawn: a green + for
    each positive point, a red x for each negative one, the box outlined in yellow. Coordinates are
    image pixels (x, y); `colors` are (r, g, b) in 0-1 or 0-255."""
    from PIL import Image, ImageDraw

    canvas = _to_rgb8(image2d_or_rgb).astype(np.float32)
    h, w = canvas.shape[:2]
    if masks is None:
        mask_list: list[np.ndarray] = []
    elif isinstance(masks, np.ndarray) and masks.ndim == 2:
        mask_list = [masks]
    else:
        mask_list = list(masks)
    mask_list = [np.asarray(m).astype(bool) for m in mask_list]
    for m in mask_list:
        if m.shape != (h, w):
            raise InputImageError(f"Mask shape {m.shape} does not match the image ({h}, {w}).")
    palette = [Segment("c", c).color for c in colors] if colors is not None else list(DEFAULT_COLORS)
    if len(palette) < len(mask_list):
        raise InputImageError(f"{len(mask_list)} masks but {len(palette)} colours.")
    for m, color in zip(mask_list, palette):
        rgb = np.asarray(color, np.float32) * 255
        canvas[m] = (1 - alpha) * canvas[m] + alpha * rgb
        canvas[_outline(m)] = rgb
    out = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(out)
    size = max(4, min(h, w) // 60)
    width = max(1, size // 3)
    if points is not None:
        points = np.asarray(points, dtype=float).reshape(-1, 2)
        point_labels = np.ones(len(points), int) if labels is None else np.asarray(labels, int).reshape(-1)
        if len(point_labels) != len(points):
            raise InputImageError(f"{len(points)} points but {len(point_labels)} labels.")
        for (x, y), label in zip(points, point_labels):
            if label > 0:
                draw.line([(x - size, y), (x + size, y)], fill=(0, 255, 0), width=width)
                draw.line([(x, y - size), (x, y + size)], fill=(0, 255, 0), width=width)
            else:
                draw.line([(x - size, y - size), (x + size, y + size)], fill=(255, 0, 0), width=width)
                draw.line([(x - size, y + size), (x + size, y - size)], fill=(255, 0, 0), width=width)
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=(255, 255, 0), width=width)
    with _atomic_output(path, overwrite) as tmp:
        out.save(tmp, format="PNG")
    return Path(path)


__all__ = ["Geometry", "Volume", "read_volume", "write_volume", "Cine", "read_cine", "Segment", "Segmentation",
           "write_segmentation", "read_segmentation", "save_overlay_png", "DEFAULT_COLORS"]
