"""The prompts of one request, as one validated value: what the user (or a simulator) asks the model for.

    from sonosam.prompts import Prompts, PromptKind
    p = Prompts(points=[(370, 170)], labels=[1])          # (x, y) pixels; label 1 foreground, 0 background
    p = p.add_click(400, 200, positive=False)            # a new value: Prompts never change in place
    p = Prompts(box=(300, 70, 440, 270))                 # (x0, y0, x1, y1), x0 < x1, y0 < y1
    p = p.with_mask(previous.logits)                     # (256, 256) low-res logits of an earlier answer

Coordinates follow docs/CORE_API.md: points are ``(x, y) = (col, row)`` pixel centres, boxes are
``(x0, y0, x1, y1)`` pixel corners. Shape and value checks happen here, once, at construction;
``check_inside`` checks against an image's size; the model's own rules (which kinds it was trained for)
live in the model (``sonosam.models.sam``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from .errors import PromptError

__all__ = ["Prompts", "PromptKind", "Prediction", "LOW_RES"]

LOW_RES = 256  # SAM's mask-prompt / low-res-logits side, for every family


def low_res_frame(shape) -> tuple[int, int]:
    """The (h, w) an image of ``shape`` (H, W) takes in the low-res frame: its longest side spans it, padded at the
    bottom/right (every family lays the frame out so)."""
    height, width = shape
    scale = LOW_RES / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


MAX_POINTS = 1000   # clicks in one prompt

class PromptKind(str, enum.Enum):
    """A kind of prompt; str-valued, so ``PromptKind.BOX == "box"`` and sets of kinds compare with strings."""
    POINT = "point"
    BOX = "box"
    MASK = "mask"

    __hash__ = str.__hash__   # so that "box" and PromptKind.BOX are the same set member

    def __str__(self) -> str:
        return self.value


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class Prompts:
    """Points, labels, box and mask logits of one request; arrays inside are read-only copies:
    ``points`` (N, 2) float64, ``labels`` (N,) int64, ``box`` (4,) float64 or None,
    ``mask_logits`` (256, 256) float32 or None. ``labels=None`` with points means all foreground."""

    points: np.ndarray = field(default=None)
    labels: np.ndarray = field(default=None)
    box: np.ndarray | None = None
    mask_logits: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        points = np.zeros((0, 2)) if self.points is None else self.points
        try:
            points = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise PromptError(f"points: {_brief(self.points)} are not numbers; give (x, y) pairs.") from None
        if points.size == 0:
            points = np.zeros((0, 2))
        if points.ndim == 1 and points.shape == (2,):
            points = points[None]
        if points.ndim != 2 or points.shape[1] != 2:
            raise PromptError(f"points: got an array of shape {points.shape}; give (x, y) pairs, shape (N, 2).")
        if not np.isfinite(points).all():
            raise PromptError(f"points: coordinates {points.tolist()} are not all finite numbers.")
        if len(points) > MAX_POINTS:   # the decoder's memory grows with them; no user clicks that often
            raise PromptError(f"points: {len(points)} of them; give at most {MAX_POINTS}.")

        if self.labels is None or (np.size(self.labels) == 0 and len(points) == 0):
            labels = np.ones(len(points), dtype=np.int64)
        else:
            raw = np.asarray(self.labels).reshape(-1)
            if raw.dtype == bool:
                raw = raw.astype(np.int64)
            if raw.dtype.kind not in "iuf" or not np.isin(raw, (0, 1)).all() or len(raw) != len(points):
                raise PromptError(f"labels: got {len(points)} points and labels {raw.tolist()}: give one label "
                                  "per point, 1 (foreground) or 0 (background).")
            labels = raw.astype(np.int64)

        box = None
        if self.box is not None:
            try:
                box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError, OverflowError):
                raise PromptError(f"box: {_brief(self.box)} is not four numbers (x0, y0, x1, y1).") from None
            if box.shape != (4,):
                raise PromptError(f"box: {box.tolist()} is not four numbers (x0, y0, x1, y1).")
            if not np.isfinite(box).all():
                raise PromptError(f"box: {box.tolist()} has coordinates that are not finite numbers.")
            if not (box[0] < box[2] and box[1] < box[3]):
                raise PromptError(f"box: {box.tolist()} is not (x0, y0, x1, y1) with x0 < x1 and y0 < y1.")

        mask = None
        if self.mask_logits is not None:
            mask = np.asarray(self.mask_logits, dtype=np.float32)
            if mask.shape != (LOW_RES, LOW_RES) and mask.size == LOW_RES * LOW_RES and mask.ndim > 2:
                mask = mask.reshape(LOW_RES, LOW_RES)   # (1, 256, 256) from a prediction's logits
            if mask.shape != (LOW_RES, LOW_RES):
                raise PromptError(f"mask_logits: got shape {mask.shape}; give the (256, 256) low-res logits "
                                  "of an earlier prediction (Prediction.logits).")
            if not np.isfinite(mask).all():
                raise PromptError("mask_logits: the mask prompt has NaN/Inf values.")

        object.__setattr__(self, "points", _readonly(points))
        object.__setattr__(self, "labels", _readonly(labels))
        object.__setattr__(self, "box", None if box is None else _readonly(box))
        object.__setattr__(self, "mask_logits", None if mask is None else _readonly(mask))

    # ------------------------------------------------------------------------------------ reading

    @property
    def kinds(self) -> frozenset[PromptKind]:
        kinds = set()
        if len(self.points):
            kinds.add(PromptKind.POINT)
        if self.box is not None:
            kinds.add(PromptKind.BOX)
        if self.mask_logits is not None:
            kinds.add(PromptKind.MASK)
        return frozenset(kinds)

    @property
    def is_empty(self) -> bool:
        return not self.kinds

    @property
    def n_clicks(self) -> int:
        return len(self.points)

    @property
    def has_points(self) -> bool:
        return len(self.points) > 0

    def __eq__(self, other) -> bool:
        if not isinstance(other, Prompts):
            return NotImplemented
        same = (lambda a, b: (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b)))
        return (np.array_equal(self.points, other.points) and np.array_equal(self.labels, other.labels)
                and same(self.box, other.box) and same(self.mask_logits, other.mask_logits))

    __hash__ = None  # holds arrays

    def check_inside(self, width: int, height: int) -> None:
        """PromptError naming the first point or box corner outside a ``width`` x ``height`` image."""
        for what, xy in (("Point", self.points), ("Box corner", None if self.box is None else self.box.reshape(2, 2))):
            if xy is None or not len(xy):
                continue
            outside = (xy[:, 0] < -0.5) | (xy[:, 0] > width - 0.5) | (xy[:, 1] < -0.5) | (xy[:, 1] > height - 0.5)
            if outside.any():
                bad = xy[outside][0]
                raise PromptError(f"{what} ({bad[0]:g}, {bad[1]:g}) lies outside the {width}x{height} image "
                                  f"(x must be in 0..{width - 1}, y in 0..{height - 1}).")

    # ------------------------------------------------------------------------------------ new values

    def add_click(self, x: float, y: float, positive: bool) -> "Prompts":
        return Prompts(np.concatenate([self.points, [[x, y]]]), np.append(self.labels, int(bool(positive))),
                       self.box, self.mask_logits)

    def with_mask(self, logits) -> "Prompts":
        """The same prompts with ``logits`` as the mask prompt (None: without one)."""
        return Prompts(self.points, self.labels, self.box, logits)

    def with_box(self, box) -> "Prompts":
        return Prompts(self.points, self.labels, box, self.mask_logits)

    def without_points(self) -> "Prompts":
        return Prompts(None, None, self.box, self.mask_logits)

    # ------------------------------------------------------------------------------------ wire format

    def to_json(self) -> dict:
        """Points, labels and box as plain lists; the mask logits travel separately, as raw bytes."""
        return {"points": self.points.tolist(), "labels": self.labels.tolist(),
                "box": None if self.box is None else self.box.tolist()}

    @classmethod
    def from_json(cls, data: dict, mask_logits=None) -> "Prompts":
        if not isinstance(data, dict):
            raise PromptError(f"prompts: expected an object with points, labels and box; got {type(data).__name__}.")
        unknown = set(data) - {"points", "labels", "box"}
        if unknown:
            raise PromptError(f"prompts: unknown field(s) {sorted(unknown)}; expected points, labels, box.")
        return cls(data.get("points"), data.get("labels"), data.get("box"), mask_logits)


@dataclass
class Prediction:
    """The answer to one Prompts: masks best first (highest predicted IoU). Numpy only, so that the in-process
    model and the server's client (sonosam.client, no torch) hand back the same type."""
    masks: np.ndarray           # (N, H, W) bool
    scores: np.ndarray          # (N,) predicted IoU
    low_res_logits: np.ndarray  # (N, 256, 256) float32; feed one back as `mask_logits` to refine
    notes: list[str] = field(default_factory=list)  # how the prompts were interpreted, for the user
    seconds: float = 0.0        # decode time on the server (0 in-process)

    @property
    def mask(self) -> np.ndarray:
        return self.masks[0]

    @property
    def score(self) -> float:
        return float(self.scores[0])

    @property
    def logits(self) -> np.ndarray:
        return self.low_res_logits[0]


def as_prompts(prompts: Prompts | None = None, *, points=None, labels=None, box=None, mask_logits=None) -> Prompts:
    """A Prompts, or the keyword conveniences of `predict` made into one (the one place that does it)."""
    loose = any(value is not None for value in (points, labels, box, mask_logits))
    if prompts is None:
        return Prompts(points, labels, box, mask_logits)
    if not isinstance(prompts, Prompts):
        raise TypeError(f"prompts must be a sonosam.prompts.Prompts, not {type(prompts).__name__}; or give "
                        "points=/labels=/box=/mask_logits= as keywords.")
    if loose:
        raise PromptError("Give either a Prompts or the points/labels/box/mask_logits keywords, not both.")
    return prompts
