"""Honest synthetic ground truth for tracking: ONE real echo frame deformed by a KNOWN motion.

No registry package ships ultrasound loops with ground-truth masks. So we take a real frame of the
apical 4-chamber loop (real anatomy, real speckle, real gain), segment its structures once (a box
around each on that frame, segmented by the model — or masks you give), and make a loop by warping
both the frame and the masks with the same known, smooth, periodic deformation:

    backward map  x_src = x + u_t(x),    I_t(x) = I_0(x + u_t(x)),    M_t(x) = M_0(x + u_t(x))
    u_t(x) = sum_k  s_k * a(t) * (x - c_k) * exp(-|x - c_k|^2 / (2 sigma_k^2))  +  b(t)
    a(t) = A * (1 - cos(2 pi t / P)) / 2          (0 at t = 0, A at mid-cycle: systole-like)

c_k, sigma_k: centroid and ~1.3x the radius of structure k; s_k = +1 makes it contract (the LV),
s_k = -0.5 makes it expand in counter-phase (the LA fills while the LV empties); b(t) is a small
probe drift. Each frame gets fresh multiplicative speckle-like noise (real loops decorrelate between
frames). Optional artefacts: acoustic dropout (a dark band over part of the structure, masks
unchanged), a blank frame and a cut (a mirrored frame). Outputs built from this say so: see
``SyntheticLoop.description``. It tests the tracker's machinery on real image content with exact
truth; it is not a substitute for expert-annotated clinical loops (none are available here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["SyntheticLoop", "make_synthetic_loop", "echo_synthetic_loop", "LV_BOX", "LA_BOX"]

# Boxes on frame 0 of the real A4C loop (480x640), (x0, y0, x1, y1), checked on an overlay.
LV_BOX = (300, 70, 440, 270)
LA_BOX = (305, 262, 425, 345)


@dataclass
class SyntheticLoop:
    frames: np.ndarray                      # (T, H, W) uint8
    masks: dict[str, np.ndarray]            # name -> (T, H, W) bool, exact by construction
    description: str
    params: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return self.frames.shape[0]


def _pull(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, interpolation) -> np.ndarray:
    return cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_REFLECT)


def make_synthetic_loop(base_frame: np.ndarray, base_masks: dict[str, np.ndarray], n_frames: int = 20,
                        period: float = 20.0, amplitude: float = 0.25, signs: dict[str, float] | None = None,
                        drift_px: tuple[float, float] = (4.0, 3.0), noise: float = 0.12, seed: int = 0,
                        dropout_frames: tuple[int, ...] = (), blank_frames: tuple[int, ...] = (),
                        cut_frames: tuple[int, ...] = (), source: str = "a real frame") -> SyntheticLoop:
    base = np.asarray(base_frame, np.float32)
    h, w = base.shape
    names = list(base_masks)
    signs = signs or {name: (1.0 if i == 0 else -0.5) for i, name in enumerate(names)}
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    centres = {}
    for name in names:
        m = np.asarray(base_masks[name], bool)
        rows, cols = np.nonzero(m)
        radius = np.sqrt(m.sum() / np.pi)
        centres[name] = (cols.mean(), rows.mean(), 1.3 * radius)
    rng = np.random.default_rng(seed)
    frames = np.empty((n_frames, h, w), np.uint8)
    masks = {name: np.empty((n_frames, h, w), bool) for name in names}
    first = names[0]
    for t in range(n_frames):
        a = amplitude * (1 - np.cos(2 * np.pi * t / period)) / 2
        ux = np.full((h, w), drift_px[0] * np.sin(2 * np.pi * t / period), np.float32)
        uy = np.full((h, w), drift_px[1] * np.sin(2 * np.pi * t / period + 1.0), np.float32)
        for name in names:
            cx, cy, sigma = centres[name]
            dx, dy = grid_x - cx, grid_y - cy
            weight = np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)) * (signs[name] * a)
            ux += dx * weight
            uy += dy * weight
        map_x, map_y = grid_x + ux, grid_y + uy
        frame = _pull(base, map_x, map_y, cv2.INTER_LINEAR)
        if noise > 0:
            speckle = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.8)
            frame = frame * (1 + noise * speckle / max(speckle.std(), 1e-6))
        for name in names:
            masks[name][t] = _pull(base_masks[name].astype(np.float32), map_x, map_y, cv2.INTER_LINEAR) >= 0.5
        if t in dropout_frames:  # acoustic shadow over the lower-left of the first structure
            rows, cols = np.nonzero(masks[first][t])
            y0, x0 = int(rows.mean()), int(cols.min()) - 10
            frame[y0:, max(0, x0):int(cols.mean())] *= 0.15
        if t in blank_frames:
            frame[:] = 0
        if t in cut_frames:
            frame = frame[:, ::-1]
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    description = (f"SYNTHETIC loop with exact ground truth: {source} warped by a known smooth periodic "
                   f"deformation (contraction amplitude {amplitude:.0%}, period {period:g} frames, drift "
                   f"{drift_px} px, speckle noise {noise:.0%}); masks warped by the same field"
                   + (f"; dropout on frames {list(dropout_frames)}" if dropout_frames else "")
                   + (f"; blank frames {list(blank_frames)}" if blank_frames else "")
                   + (f"; cut (mirrored) frames {list(cut_frames)}" if cut_frames else "") + ".")
    params = dict(n_frames=n_frames, period=period, amplitude=amplitude, drift_px=drift_px, noise=noise, seed=seed,
                  dropout_frames=list(dropout_frames), blank_frames=list(blank_frames), cut_frames=list(cut_frames))
    return SyntheticLoop(frames, masks, description, params)


def echo_frame(index: int = 0) -> np.ndarray:
    """One frame of the real A4C loop as grayscale uint8 (BT.601 luma, as ``sonosam.io.read_cine``), decoding
    only that frame."""
    from pydicom.pixels import pixel_array

    from ..data import echo_a4c_path
    from ..io import _luminance

    rgb = pixel_array(str(echo_a4c_path()), index=index)  # decodes that one frame (YBR -> RGB by pydicom)
    return _luminance(rgb) if rgb.ndim == 3 else rgb.astype(np.uint8)


def echo_synthetic_loop(predictor, n_frames: int = 20, scale: float = 0.5, objects=("LV",),
                        frame_index: int = 0, **kwargs) -> SyntheticLoop:
    """The synthetic loop built on frame ``frame_index`` of the real A4C echo (pydicom-data), downscaled by
    ``scale``; structures segmented on that real frame by ``predictor`` from LV_BOX / LA_BOX."""
    from .tracker import _clean

    base = echo_frame(frame_index)
    if scale != 1.0:
        base = cv2.resize(base, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    boxes = {"LV": LV_BOX, "LA": LA_BOX}
    masks = {}
    claimed = np.zeros(base.shape, bool)
    for name in objects:
        box = tuple(v * scale for v in boxes[name])
        mask = _clean(predictor.predict(base, box=box, key=("synthetic-base", frame_index, scale)).mask) & ~claimed
        masks[name] = mask
        claimed |= mask
    return make_synthetic_loop(base, masks, n_frames=n_frames,
                               source=f"frame {frame_index} of the real A4C echo (pydicom-data) at scale {scale:g}, "
                                      f"{'/'.join(objects)} segmented there by {predictor.model.spec.name} from boxes",
                               **kwargs)
