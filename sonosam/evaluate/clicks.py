"""Click simulator: the SonoSAM paper's interactive protocol, shared by evaluation and training.

Coordinates follow docs/CORE_API.md: masks are ``[row, col]`` arrays, points are ``(x, y)`` =
``(col, row)``, boxes are ``(x0, y0, x1, y1)`` inclusive pixel corners.

Evaluation uses the deterministic rules (no ``rng``):

* first prompt: a positive click at the ground-truth centroid, moved to the point of maximum distance
  to the boundary when the centroid falls outside the mask; or the tight bounding box (``jitter=0``);
* each next click: in the largest error region (connected component of false negatives or false
  positives, by area), at its point of maximum distance to the region's boundary (the image border
  counts as boundary); positive for a false-negative region, negative for a false-positive one.

Training (issue 7) draws from the same functions with a ``numpy.random.Generator``: a click near the
centroid jittered by up to ``jitter`` x the structure's size, a box whose sides move by up to ``jitter`` x
its width/height, and error-region clicks sampled at random (``mode="random"``) instead of at the centre.
``ClickSimulator`` bundles these with one generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import PromptError
from ..masks import bounding_box
from ..prompts import Prompts

__all__ = [
    "Click", "ClickSimulator", "first_click", "centroid_click", "box_from_mask", "next_click",
    "error_regions", "max_distance_point",
]

_STRUCT = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, as the distance transform's metric


@dataclass(frozen=True)
class Click:
    """One simulated click: pixel coordinates ``(x, y)`` and label 1 (positive) / 0 (negative)."""

    x: int
    y: int
    label: int

    @property
    def xy(self) -> tuple[int, int]:
        return (self.x, self.y)

    @property
    def positive(self) -> bool:
        return self.label == 1


def _as_mask(mask, name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise PromptError(f"The {name} must be a 2D array (rows, cols); got shape {mask.shape}.")
    return mask.astype(bool, copy=False)


def _require_structure(gt: np.ndarray) -> None:
    if not gt.any():
        raise PromptError("The ground-truth mask is empty: there is no structure to click on. "
                          "Drop empty masks from the data (e.g. with a minimum structure area).")


def max_distance_point(region) -> tuple[int, int]:
    """``(x, y)`` of the pixel of ``region`` farthest from its boundary (Euclidean distance transform,
    pixels outside the image count as background). Ties go to the first pixel in row-major order."""
    region = _as_mask(region, "region")
    if not region.any():
        raise PromptError("Cannot place a click in an empty region.")
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(col), int(row)


def centroid_click(gt) -> Click:
    """Positive click at the centroid of ``gt`` (rounded to the nearest pixel, halves up); when that pixel is not in
    the mask (concave or split structures), at the mask's point of maximum distance to its boundary."""
    gt = _as_mask(gt, "ground-truth mask")
    _require_structure(gt)
    rows, cols = np.nonzero(gt)
    row, col = int(np.floor(rows.mean() + 0.5)), int(np.floor(cols.mean() + 0.5))  # halves round up
    if gt[row, col]:
        return Click(col, row, 1)
    x, y = max_distance_point(gt)
    return Click(x, y, 1)


def first_click(gt, jitter: float = 0.0, rng: np.random.Generator | None = None, max_tries: int = 20) -> Click:
    """The first positive click. ``jitter=0``: :func:`centroid_click`. ``jitter>0`` (training): the centroid
    click moved by a uniform offset of up to ``jitter`` x the structure's bounding-box height/width,
    re-drawn until it lands inside the mask (after ``max_tries`` misses, the un-jittered click)."""
    click = centroid_click(gt)
    if jitter <= 0:
        return click
    gt = _as_mask(gt)
    rng = rng if rng is not None else np.random.default_rng()
    rows, cols = np.nonzero(gt)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    for _ in range(max_tries):
        x = int(round(click.x + rng.uniform(-jitter, jitter) * width))
        y = int(round(click.y + rng.uniform(-jitter, jitter) * height))
        if 0 <= y < gt.shape[0] and 0 <= x < gt.shape[1] and gt[y, x]:
            return Click(x, y, 1)
    return click


def box_from_mask(gt, jitter: float = 0.0, rng: np.random.Generator | None = None,
                  margin: int = 0) -> tuple[int, int, int, int]:
    """Bounding box ``(x0, y0, x1, y1)`` (inclusive) of ``gt``, grown by ``margin`` pixels on each side; with
    ``jitter>0`` each side also moves independently by a uniform ``[-jitter, +jitter]`` x the box's
    width (x sides) or height (y sides), MedSAM-style. The box is clipped to the image, with
    ``x0 < x1`` and ``y0 < y1`` (at least two pixels each way, as the models require)."""
    gt = _as_mask(gt, "ground-truth mask")
    _require_structure(gt)
    left, top, right, bottom = bounding_box(gt)
    x0, x1 = float(left - margin), float(right + margin)
    y0, y1 = float(top - margin), float(bottom + margin)
    if jitter > 0:
        rng = rng if rng is not None else np.random.default_rng()
        width, height = x1 - x0 + 1, y1 - y0 + 1
        dx0, dx1 = rng.uniform(-jitter, jitter, 2) * width
        dy0, dy1 = rng.uniform(-jitter, jitter, 2) * height
        x0, x1, y0, y1 = x0 + dx0, x1 + dx1, y0 + dy0, y1 + dy1
    h, w = gt.shape
    x0, x1 = int(np.clip(round(x0), 0, w - 1)), int(np.clip(round(x1), 0, w - 1))
    y0, y1 = int(np.clip(round(y0), 0, h - 1)), int(np.clip(round(y1), 0, h - 1))
    x0, x1 = _proper_span(x0, x1, w)
    y0, y1 = _proper_span(y0, y1, h)
    return x0, y0, x1, y1


def _proper_span(low: int, high: int, size: int) -> tuple[int, int]:
    # models want low < high: an inverted or one-pixel span becomes two pixels around its middle
    if high > low or size < 2:
        return low, high
    middle = (low + high) // 2
    low = min(max(middle, 0), size - 2)
    return low, low + 1


def error_regions(pred, gt) -> list[tuple[np.ndarray, int, int]]:
    """Connected error regions of ``pred`` against ``gt`` as ``(region mask, label, area)``, largest first;
    label 1 for false-negative regions (missed structure), 0 for false-positive ones. At equal area a
    false-negative region comes first."""
    pred, gt = _as_mask(pred, "predicted mask"), _as_mask(gt, "ground-truth mask")
    if pred.shape != gt.shape:
        raise PromptError(f"Prediction {pred.shape} and ground truth {gt.shape} differ in shape.")
    regions = []
    for error, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if not error.any():
            continue
        components, count = ndimage.label(error, structure=_STRUCT)
        areas = np.bincount(components.ravel(), minlength=count + 1)
        for index in range(1, count + 1):
            regions.append((components == index, label, int(areas[index])))
    regions.sort(key=lambda item: (-item[2], -item[1]))
    return regions


def next_click(pred, gt, mode: str = "center", rng: np.random.Generator | None = None) -> Click | None:
    """The corrective click for prediction ``pred`` against ``gt``: in the largest error region, positive if
    it is a false negative, negative if a false positive. ``mode="center"`` (evaluation): at the region's
    point of maximum distance to its boundary. ``mode="random"`` (training): a uniformly random pixel of
    that region. ``None`` when the prediction is already perfect."""
    if mode not in ("center", "random"):
        raise ValueError(f"mode must be 'center' or 'random', not {mode!r}")
    pred, gt = _as_mask(pred, "predicted mask"), _as_mask(gt, "ground-truth mask")
    if pred.shape != gt.shape:
        raise PromptError(f"Prediction {pred.shape} and ground truth {gt.shape} differ in shape.")
    largest = _largest_error_region(pred, gt)
    if largest is None:
        return None
    region, label = largest
    if mode == "center":
        x, y = max_distance_point(region)
    else:
        rng = rng if rng is not None else np.random.default_rng()
        rows, cols = np.nonzero(region)
        pick = int(rng.integers(rows.size))
        x, y = int(cols[pick]), int(rows[pick])
    return Click(x, y, label)


def _largest_error_region(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int] | None:
    # Same rule as error_regions()[0], without building every component mask.
    best = None
    for error, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if not error.any():
            continue
        components, count = ndimage.label(error, structure=_STRUCT)
        areas = np.bincount(components.ravel(), minlength=count + 1)
        areas[0] = 0
        index = int(np.argmax(areas))
        if best is None or areas[index] > best[2]:
            best = (components, index, int(areas[index]), label)
    if best is None:
        return None
    components, index, _, label = best
    return components == index, label


class ClickSimulator:
    """The interactive protocol with one random generator, for evaluation (``jitter=0``, ``mode="center"``:
    fully deterministic) and for training's prompt sampler (jittered starts, random error clicks).

    >>> sim = ClickSimulator(rng=np.random.default_rng(0), point_jitter=0.1, box_jitter=0.2, mode="random")
    >>> prompts = sim.start(gt, kind=sim.choose_start())   # a sonosam.prompts.Prompts: a click or a box
    >>> click, prompts = sim.correct(pred_mask, gt, prompts)   # prompts with the click added (None if perfect)
    """

    def __init__(self, rng: np.random.Generator | int | None = None, point_jitter: float = 0.0,
                 box_jitter: float = 0.0, box_margin: int = 0, mode: str = "center"):
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.point_jitter, self.box_jitter, self.box_margin, self.mode = point_jitter, box_jitter, box_margin, mode

    def choose_start(self, kinds=("point", "box")) -> str:
        """One start kind drawn uniformly from ``kinds`` (the training rule: point or box, equally likely)."""
        kinds = list(kinds)
        return kinds[int(self.rng.integers(len(kinds)))]

    def start(self, gt, kind: str = "point") -> Prompts:
        """The first prompt, ``kind`` ``"point"`` (a positive click) or ``"box"``."""
        if kind == "point":
            click = first_click(gt, self.point_jitter, self.rng)
            return Prompts(points=[click.xy], labels=[click.label])
        if kind == "box":
            return Prompts(box=box_from_mask(gt, self.box_jitter, self.rng, self.box_margin))
        raise ValueError(f"start kind must be 'point' or 'box', not {kind!r}")

    def correct(self, pred, gt, prompts: Prompts) -> tuple[Click | None, Prompts]:
        """The next corrective click for ``pred`` and ``prompts`` with it added; ``(None, prompts)`` if perfect."""
        click = next_click(pred, gt, self.mode, self.rng)
        if click is None:
            return None, prompts
        return click, prompts.add_click(click.x, click.y, click.positive)
