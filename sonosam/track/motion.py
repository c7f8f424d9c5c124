"""Motion prior for the tracker: dense optical flow between consecutive frames, used to warp the previous
frame's mask onto the current frame, with the two signals the confidence score takes from it.

Why DIS optical flow (OpenCV's Dense Inverse Search) rather than SimpleITK registration or Farneback:
it is dense (the mask's boundary moves non-rigidly as the ventricle contracts), it costs a few
milliseconds per frame pair at half resolution on one core (a B-spline registration costs seconds),
and its patch-based search with variational refinement copes with speckle better than Farneback's
polynomial expansion once the frames are lightly smoothed. Flow is computed on frames smoothed with a
Gaussian (sigma 1.5 px) and downscaled by `scale`, then upsampled back.

Conventions: ``backward_flow(cur, prev)`` gives, for each pixel ``x`` of the current frame, the offset
``f(x)`` such that ``cur(x) ~ prev(x + f(x))``; warping the previous mask is then a pull-back
``mask_cur(x) = mask_prev(x + f(x))`` (``cv2.remap``), which never leaves holes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from ..masks import bounding_box

__all__ = ["FlowEstimator", "MotionPrior", "follow_slice", "warp", "roi_ncc"]


def _prepare(frame: np.ndarray, scale: float) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim == 3:
        frame = cv2.cvtColor(np.ascontiguousarray(frame[..., :3]).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    if frame.dtype != np.uint8:
        lo, hi = np.percentile(frame, (0.5, 99.5))
        frame = np.clip((frame - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)
    if scale != 1.0:
        frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(frame, (0, 0), 1.5)


def warp(image: np.ndarray, flow: np.ndarray, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """Pull ``image`` (H, W) through ``flow`` (H, W, 2): ``out(x) = image(x + flow(x))`` (border: 0)."""
    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(np.ascontiguousarray(image), grid_x + flow[..., 0], grid_y + flow[..., 1], interpolation,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def roi_ncc(a: np.ndarray, b: np.ndarray, roi: np.ndarray) -> float:
    """Normalised cross-correlation of two images inside ``roi``; 0 when either is flat there (a blank frame)."""
    a = a[roi].astype(np.float64)
    b = b[roi].astype(np.float64)
    if a.size < 16:
        return 0.0
    a -= a.mean()
    b -= b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den < 1e-6 * a.size or a.std() < 1.0 or b.std() < 1.0:  # flat (blank or saturated) region
        return 0.0
    return float((a * b).sum() / den)


# OpenCV's DIS flow crashes the process (segfault) on images 8-15 px high and refuses those under 8 px: a
# propagation along a short axis (a 12-slice stack seen sagittally) gives it such windows
MIN_FLOW_SIDE = 16


class FlowEstimator:
    """Dense optical flow between frames, cached per frame pair (flows are re-used by re-runs)."""

    def __init__(self, scale: float = 0.5, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, cache_pairs: int = 32):
        self.scale = scale
        self._dis = cv2.DISOpticalFlow_create(preset)
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_pairs = cache_pairs
        self.calls = 0

    def flow(self, src: np.ndarray, dst: np.ndarray, key: tuple | None = None) -> np.ndarray:
        """Full-resolution (H, W, 2) float32 flow with ``src(x) ~ dst(x + flow(x))``."""
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        h, w = np.asarray(src).shape[:2]
        a, b = _prepare(src, self.scale), _prepare(dst, self.scale)
        if min(a.shape[:2]) < MIN_FLOW_SIDE:
            return np.zeros((h, w, 2), np.float32)   # too small to measure: no motion
        small = self._dis.calc(a, b, None)
        self.calls += 1
        if self.scale != 1.0:
            flow = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) / self.scale
        else:
            flow = small
        flow = flow.astype(np.float32)
        if key is not None:
            self._cache[key] = flow
            while len(self._cache) > self._cache_pairs:
                self._cache.popitem(last=False)
        return flow


@dataclass
class MotionPrior:
    """The previous mask carried onto the current frame, with the evidence that the carry is right."""
    mask: np.ndarray        # (H, W) bool, the warped previous mask
    soft: np.ndarray        # (H, W) float32 in [0, 1], the bilinear pull-back of the previous mask
    consistency: float      # share of the mask's neighbourhood whose forward-backward flow error < 1 px
    ncc: float              # photometric agreement: NCC(warped previous frame, current frame) around the mask
    score: float            # the motion signal in [0, 1] (see docs/tracking.md)
    carried: list = None    # the ``carry`` masks warped by the same flow


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1) slice bounds (end exclusive) of the mask's pixels; None if empty."""
    box = bounding_box(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return y0, y1 + 1, x0, x1 + 1


def _window(mask: np.ndarray, min_grow: int) -> tuple[int, int, int, int] | None:
    """The mask's bounding box grown by half its size (at least `min_grow` px), inside the frame: where its motion
    is measured (5-10x cheaper than the whole frame)."""
    box = _bbox(mask)
    if box is None:
        return None
    r0, r1, c0, c1 = box
    grow = int(max(min_grow, 0.5 * max(r1 - r0, c1 - c0)))
    h, w = mask.shape
    return max(0, r0 - grow), min(h, r1 + grow), max(0, c0 - grow), min(w, c1 + grow)


def follow_slice(estimator: FlowEstimator, prev_image: np.ndarray, image: np.ndarray, prev_mask: np.ndarray,
                 min_grow: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The previous slice of a volume and its mask pulled onto the next slice (`image`) by optical flow around the
    mask: a structure's cross-section moves in-plane from slice to slice (the caudate's head, the hippocampus), and a
    front prompted where the mask was slides off it. Both slices are scaled to 8 bits by the previous one's
    percentiles (a volume's slices share intensities; per-frame scaling would read a contrast change as motion).
    Returns (prev_image, prev_mask) unchanged when the flow loses more than half the mask."""
    prev_mask = np.asarray(prev_mask, bool)
    window = _window(prev_mask, min_grow)
    if window is None:
        return prev_image, prev_mask
    r0, r1, c0, c1 = window
    before = np.asarray(prev_image, np.float32)[r0:r1, c0:c1]
    lo, hi = np.percentile(before, (0.5, 99.5))
    eight_bit = lambda a: np.clip((a - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)
    backward = estimator.flow(eight_bit(np.asarray(image, np.float32)[r0:r1, c0:c1]), eight_bit(before))
    moved_mask = prev_mask.copy()
    moved_mask[r0:r1, c0:c1] = warp(prev_mask[r0:r1, c0:c1].astype(np.float32), backward) >= 0.5
    if moved_mask.sum() < 0.5 * prev_mask.sum():
        return prev_image, prev_mask
    moved_image = np.array(prev_image, np.float32)
    moved_image[r0:r1, c0:c1] = warp(np.ascontiguousarray(before), backward)
    return moved_image, moved_mask


def motion_prior(estimator: FlowEstimator, prev_frame: np.ndarray, cur_frame: np.ndarray, prev_mask: np.ndarray,
                 ncc_floor: float = 0.5, ncc_good: float = 0.9, carry: tuple = ()) -> MotionPrior:
    """Warp ``prev_mask`` (on ``prev_frame``) onto ``cur_frame`` and score the warp.

    Flow is computed only in a window around the mask (its bounding box grown by half its size, at
    least 32 px): the structure's motion is what matters and it is 5-10x cheaper than the whole frame.
    score = consistency x clip((ncc - ncc_floor) / (ncc_good - ncc_floor), 0, 1): a blank frame or a cut
    to another view breaks the forward-backward agreement and decorrelates the frames."""
    prev_mask = np.asarray(prev_mask, bool)
    h, w = prev_mask.shape
    window = _window(prev_mask, 32)
    if window is None:
        empty = np.zeros_like(prev_mask)
        return MotionPrior(empty, empty.astype(np.float32), 0.0, 0.0, 0.0, [np.asarray(c, bool) for c in carry])
    r0, r1, c0, c1 = window
    prev_c = np.ascontiguousarray(np.asarray(prev_frame)[r0:r1, c0:c1])
    cur_c = np.ascontiguousarray(np.asarray(cur_frame)[r0:r1, c0:c1])
    mask_c = prev_mask[r0:r1, c0:c1]
    backward = estimator.flow(cur_c, prev_c)
    forward = estimator.flow(prev_c, cur_c)
    soft_c = warp(mask_c.astype(np.float32), backward)
    soft = np.zeros((h, w), np.float32)
    soft[r0:r1, c0:c1] = soft_c
    mask = soft >= 0.5
    # Region scored: the union of both masks grown by ~1/4 of the structure's size (boundary and surroundings).
    union = (soft_c >= 0.5) | mask_c
    radius = int(max(5, 0.25 * max(np.ptp(np.nonzero(union)[0]) + 1, np.ptp(np.nonzero(union)[1]) + 1)))
    roi = cv2.dilate(union.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)) > 0
    # Forward-backward check: x -> x + b(x) on the previous frame; the forward flow there should bring it back.
    fwd_at = np.stack([warp(forward[..., 0], backward), warp(forward[..., 1], backward)], axis=-1)
    error = np.linalg.norm(backward + fwd_at, axis=-1)
    consistency = float(np.mean(error[roi] < 1.0))
    prev_warped = warp(prev_c.astype(np.float32), backward)
    ncc = roi_ncc(prev_warped, cur_c.astype(np.float32), roi)
    photo = float(np.clip((ncc - ncc_floor) / (ncc_good - ncc_floor), 0.0, 1.0))
    carried = []
    for extra in carry:  # other masks pulled by the same flow (inside the window; kept as they are outside)
        extra = np.asarray(extra, bool)
        moved = extra.copy()
        moved[r0:r1, c0:c1] = warp(extra[r0:r1, c0:c1].astype(np.float32), backward) >= 0.5
        carried.append(moved)
    return MotionPrior(mask, soft, consistency, ncc, consistency * photo, carried)
