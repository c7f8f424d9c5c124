"""Ultrasound loops: `Cine`, `read_cine` (multi-frame DICOM -> uint8 grayscale frames, physical spacing from
SequenceOfUltrasoundRegions, since SimpleITK reports 1 mm there, and the frame time)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataFileError, InputImageError, SonoSAMError
from .atomic import PathLike
from .checks import _check_dicom_header, _dicom_header, check_input_file, default_budget
from .geometry import Geometry


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


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


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
        raise DataFileError(f"{path} is not a readable DICOM file ({_first_line(error)}).") from error
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
                            f"{_first_line(error)}. For JPEG-compressed loops install pylibjpeg and pylibjpeg-libjpeg.") from error
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


def _frame_time_ms(ds, notes: list[str]) -> float | None:
    """Milliseconds per frame from the first timing field that holds a positive, finite value; a field holding
    anything else (0, negative, not a number) is skipped with a note, so it never reaches time stamps or a GIF."""
    def number(value) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return float("nan")

    def vector_ms(vector) -> float:   # first entry is 0, the rest are increments in ms
        values = [vector] if isinstance(vector, (int, float, str)) else list(vector)   # one value: a plain DS
        return float(np.median([number(v) for v in values[1:]])) if len(values) > 1 else float("nan")

    def rate_ms(rate) -> float:   # frames per second
        return 1000.0 / number(rate) if number(rate) else float("nan")

    for field, to_ms in (("FrameTime", number), ("FrameTimeVector", vector_ms), ("CineRate", rate_ms),
                         ("RecommendedDisplayFrameRate", rate_ms)):
        value = ds.get(field)
        if value is None or value == "":
            continue
        ms = to_ms(value)
        if np.isfinite(ms) and ms > 0:
            return ms
        notes.append(f"{field} in the file ({str(value)[:40]}) is no positive time; it was ignored.")
    return None


def read_cine(path: PathLike, *, keep_rgb: bool = False) -> Cine:
    """Read a (multi- or single-frame) ultrasound DICOM as grayscale frames with mm spacing and frame time.

    `keep_rgb=True` keeps the colour frames from this one decode; otherwise `Cine.rgb` decodes them on
    first use."""
    path = check_input_file(path, what="cine")
    _check_dicom_header(path, _dicom_header(path), default_budget())  # before any frame is allocated
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
    frame_time = _frame_time_ms(ds, notes)
    if frame_time is None and gray.shape[0] > 1:
        notes.append("No frame time in the file (FrameTime, FrameTimeVector, CineRate, RecommendedDisplayFrameRate).")
    return Cine(gray, spacing, known, source, frame_time, photometric, path, notes, rgb)
