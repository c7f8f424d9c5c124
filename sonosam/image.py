"""Turn whatever image a user hands us into the uint8 RGB frame that SAM-family encoders expect,
or say clearly why it cannot be segmented."""

from __future__ import annotations

import numpy as np

from .errors import InputImageError, PromptError


MIN_SIDE = 8       # pixels: below this there is nothing a model can outline
MAX_ASPECT = 32    # long side / short side: beyond it the short side shrinks under 8 px at a 256 px model input


def check_image_size(height: int, width: int, name: str = "Image") -> None:
    """The one rule for 2D sizes a model can use; refused, not padded, so the user decides how to crop."""
    if min(height, width) < MIN_SIDE:
        raise InputImageError(f"{name} of {width}x{height} pixels (width x height) is too small to segment; "
                              f"each side needs at least {MIN_SIDE} pixels.")
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise InputImageError(f"{name} of {width}x{height} pixels is too elongated to segment (more than "
                              f"{MAX_ASPECT}:1; the model would see it under {MIN_SIDE} pixels across). Crop it to "
                              f"the region of interest or pad it to a squarer shape first.")


def check_window(window) -> tuple[float, float] | None:
    """``window`` as the cache and the encoder take it: None, or two finite numbers (low, high) in any sequence."""
    if window is None:
        return None
    try:
        low, high = (float(v) for v in np.asarray(window, dtype=float).reshape(-1))
    except (TypeError, ValueError):
        raise InputImageError(f"window={window!r} is not two numbers; give window=(low, high), or None for the "
                              "image's own 0.5/99.5 percentiles.") from None
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise InputImageError(f"window={window!r} is empty or not finite; give window=(low, high) with low < high.")
    return low, high


def to_uint8_rgb(image, window: tuple[float, float] | None = None) -> np.ndarray:
    """HxW or HxWx{1,3,4} array of any numeric dtype -> HxWx3 uint8.

    uint8 images pass unchanged (echo frames are already display-ready); other dtypes (CT in HU,
    16-bit MRI, float) are windowed to 0..255, by default between the 0.5 and 99.5 percentiles so a
    few hot voxels do not flatten the contrast.
    """
    array = np.asarray(image)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputImageError(f"Image has dtype {array.dtype}; give a numeric (integer or float) array.")
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., :3] if array.shape[-1] != 1 else array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise InputImageError(
            f"Image has shape {np.shape(image)}; a 2D slice (H, W) or an RGB frame (H, W, 3) is needed. "
            "For a volume or a cine loop, pick one slice or frame (e.g. volume[k] or frames[t]).")
    check_image_size(array.shape[0], array.shape[1])
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputImageError(f"Image has {bad} NaN/Inf pixels; replace them (e.g. np.nan_to_num) before segmenting.")
    if array.min() == array.max():
        raise InputImageError(f"Image is constant (every pixel = {array.flat[0]}); there is nothing to segment. "
                              "Check the slice/frame index or the window.")
    window = check_window(window)
    if array.dtype != np.uint8 or window is not None:
        if window is not None:
            low, high = window
        else:
            low, high = np.percentile(array, (0.5, 99.5))
            if high <= low:  # mostly-constant image with a few outliers: use the full range instead
                low, high = float(array.min()), float(array.max())
        if not np.isfinite(high - low):
            raise InputImageError(f"Pixel values span {low:g}..{high:g}, beyond what can be windowed; rescale the "
                                  "image (or give window=(low, high)) first.")
        work = np.float64 if array.dtype.itemsize > 4 else np.float32  # float32 would overflow float64 data
        scaled = (np.clip(array.astype(work), low, high) - low) * (255.0 / (high - low))
        array = np.round(scaled).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return np.ascontiguousarray(array)


def volume_window(volume: np.ndarray) -> tuple[float, float]:
    """The intensity window of a whole volume (0.5/99.5 percentiles of its finite voxels, every other voxel
    each way), given with each of its slices so that neighbouring slices look alike to the model (per-slice
    windows make contrast jump between slices). The core's rule for volumes, whatever their dtype
    (propagation, adapters, benchmarks). The Slicer logic still passes uint8 volumes unwindowed (its own
    _volume_window): one rule for both is open work (docs/ARCHITECTURE.md)."""
    def finite(array):
        return array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array.reshape(-1)

    volume = np.asarray(volume)
    sample = finite(volume[::2, ::2, ::2] if volume.ndim >= 3 and min(volume.shape[:3]) > 32 else volume)
    low, high = np.percentile(sample, (0.5, 99.5)) if sample.size else (0.0, 0.0)
    if high <= low:  # mostly constant with a few outliers: the full range instead
        every = finite(volume)
        low, high = (float(every.min()), float(every.max())) if every.size else (0.0, 0.0)
    if high <= low:
        raise InputImageError("The volume is constant (or has no finite voxels): there is nothing to segment.")
    return float(low), float(high)


# Two numberings of a volume's three axes meet at the Slicer boundary, and a mix-up gives plausible
# wrong masks (a slice across another axis), not an error:
# - the core indexes numpy volumes [k, j, i]: ARRAY axis 0 = K (SimpleITK's and slicer.util's order);
# - Slicer's geometry (SonoSAMSegmentLib/geometry.py) names IJK axes: IJK axis 0 = I, 1 = J, 2 = K.
# Convert between them only with array_axis() / ijk_axis().
AXES = {"k": 0, "j": 1, "i": 2}  # axis name -> ARRAY axis of a [k, j, i] volume


def array_axis(ijk: int) -> int:
    """IJK axis (0 = I, 1 = J, 2 = K, Slicer's numbering) -> the array axis of a [k, j, i] volume."""
    if ijk not in (0, 1, 2):
        raise PromptError(f"IJK axis {ijk!r} is not 0 (I), 1 (J) or 2 (K).")
    return 2 - int(ijk)


def ijk_axis(array: int) -> int:
    """Array axis of a [k, j, i] volume -> IJK axis (0 = I, 1 = J, 2 = K, Slicer's numbering)."""
    if array not in (0, 1, 2):
        raise PromptError(f"Array axis {array!r} is not 0 (k), 1 (j) or 2 (i).")
    return 2 - int(array)


def axis_index(axis: str | int) -> int:
    """'k'/'j'/'i' (or 0/1/2) -> the array axis of a [k, j, i] volume."""
    if isinstance(axis, str) and axis.lower() in AXES:
        return AXES[axis.lower()]
    if not isinstance(axis, str) and axis in (0, 1, 2):
        return int(axis)
    raise PromptError(f"Axis {axis!r} is not one of k, j, i (array axes 0, 1, 2).")


def take_slice(volume: np.ndarray, axis: str | int, index: int) -> np.ndarray:
    """The 2D slice `index` across `axis` of a [k, j, i] volume; rows/columns are the remaining axes in order
    (axis k: [j, i]; axis j: [k, i]; axis i: [k, j]), and prompts use x = column, y = row of this slice."""
    axis = axis_index(axis)
    if volume.ndim != 3:
        raise InputImageError(f"Expected a 3D volume [k, j, i]; got shape {volume.shape}.")
    if not 0 <= index < volume.shape[axis]:
        raise InputImageError(f"Slice {index} is outside 0..{volume.shape[axis] - 1} along axis {'kji'[axis]}.")
    return np.take(volume, index, axis=axis)
