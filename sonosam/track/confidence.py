"""Confidence of a tracked mask on one frame, in [0, 1], from signals that each catch one way tracking fails.

    confidence = exp( sum_i w_i * log(max(s_i, 1e-3)) / sum_i w_i )      (weighted geometric mean)

over the signals present on that frame (see docs/tracking.md for the reasoning and the calibration):

=============  ======  ===============================================================================
signal          weight  meaning
=============  ======  ===============================================================================
``model_iou``   1       the decoder's own predicted IoU for its mask (SAM's IoU head)
``stability``   1       IoU of the mask thresholded at logit -1 and +1: a boundary that moves when the
                        threshold moves is a guess (SAM's automatic mask generator uses the same score)
``agreement``   2       Dice between the motion prior (the previous mask warped by optical flow) and the
                        model's mask: two independent estimates that agree are rarely both wrong
``area``        1       exp(-ln(A / A_prev)^2 / (2 * 0.15^2)), A_prev = the area on the previous frame:
                        a heart chamber changes area by a few % between frames at 30 fps (40 % over a
                        whole systole), not by 30 % at once
``motion``      2       forward-backward flow consistency x photometric agreement around the mask
                        (``motion.motion_prior``): ~0 on a blank frame or a cut
``drift``       2       clip((D - 0.7) / 0.25, 0, 1), D = Dice between the mask and the last keyframe's
                        mask carried by optical flow alone
                        (warped by the same flows, at no extra cost): model corrections that accumulate
                        away from the motion, or a flow chain that wanders, show up here
``shape``       2       clip(1 - (S_key - S - 0.03) / 0.07, 0, 1), S = solidity (area / convex-hull area)
                        of the mask, S_key = the keyframe's: a chamber's area changes ~30-40 % over a
                        cycle, its convexity hardly does; a mask leaking past a valve grows legs and bites
                        (real A4C loop: 0.98 on the keyframe, 0.86-0.90 where the LV leaked into the LA)
=============  ======  ===============================================================================

A geometric mean lets any one failing signal pull the score down (a blank frame drives ``motion`` to 0,
hence the confidence to ~0), while agreeing signals keep it near 1. On frames where the model was not
run (motion-only frames), ``model_iou``, ``stability`` and ``agreement`` are those of the last frame
the model saw for this object: the model's evidence is carried along with the mask it vouched for.
After a frame whose ``motion`` is below ``BREAK_MOTION`` (a break: blank frame, cut, noise) the tracker keeps the
lowest confidence since the break on that object's later frames until a keyframe (``Tracker._after_break``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import cv2
import numpy as np

from ..masks import dice

__all__ = ["Signals", "WEIGHTS", "BREAK_MOTION", "combine", "stability_score", "area_score", "drift_score", "mask_dice",
           "solidity", "shape_score"]

WEIGHTS = {"model_iou": 1.0, "stability": 1.0, "agreement": 2.0, "area": 1.0, "motion": 2.0, "drift": 2.0,
           "shape": 2.0}
AREA_SIGMA = 0.15
# A frame whose motion score is below this does not follow from its neighbour (a blank frame or a cut scores near 0,
# consecutive frames of a real loop far above; docs/tracking.md): a *break*. Frames tracked on from it keep the
# lowest confidence since the break until a keyframe (docs/tracking.md, "Experiment (stop 63)").
BREAK_MOTION = 0.1
SHAPE_TOLERANCE, SHAPE_SPAN = 0.03, 0.07


@dataclass
class Signals:
    model_iou: float | None = None
    stability: float | None = None
    agreement: float | None = None
    area: float | None = None
    motion: float | None = None
    drift: float | None = None
    shape: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def combine(signals: Signals, weights: dict | None = None) -> float:
    """Weighted geometric mean of the signals present (None = absent), in [0, 1]; 1.0 when none is present."""
    weights = weights or WEIGHTS
    total = logsum = 0.0
    for name, value in signals.as_dict().items():
        if value is None or weights.get(name, 0.0) <= 0:
            continue
        value = float(np.clip(value, 0.0, 1.0))
        total += weights[name]
        logsum += weights[name] * np.log(max(value, 1e-3))
    if total == 0:
        return 1.0
    return float(np.clip(np.exp(logsum / total), 0.0, 1.0))


def stability_score(logits: np.ndarray, offset: float = 1.0) -> float:
    """IoU between the masks at logit thresholds +offset and -offset (1.0 for a crisp mask; 0 if empty)."""
    logits = np.asarray(logits)
    high = logits > offset
    low = logits > -offset
    union = int(low.sum())
    return float(high.sum()) / union if union else 0.0


def area_score(area: float, recent_areas: Sequence[float], sigma: float = AREA_SIGMA) -> float | None:
    """How plausible the area is against the previous frame's (None without history; 0 for an empty mask)."""
    recent = [a for a in list(recent_areas) if a > 0]
    if not recent:
        return None
    if area <= 0:
        return 0.0
    ratio = np.log(area / float(recent[-1]))
    return float(np.exp(-ratio * ratio / (2 * sigma * sigma)))


mask_dice = dice   # sonosam.masks.dice, under the name the tracker reads well with


def drift_score(dice_with_flow_chain: float, low: float = 0.7, high: float = 0.95) -> float:
    """1 when the mask agrees with the flow-carried keyframe at Dice >= ``high``, 0 at <= ``low``."""
    return float(np.clip((dice_with_flow_chain - low) / (high - low), 0.0, 1.0))


def solidity(mask: np.ndarray) -> float:
    """Area / convex-hull area of the mask's outer contours (1 for a convex shape; 0 for an empty mask)."""
    mask = np.asarray(mask, np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 0.0
    hull = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
    return float(min(1.0, mask.sum() / hull)) if hull > 0 else 1.0


def shape_score(solidity_now: float, solidity_ref: float, tolerance: float = SHAPE_TOLERANCE,
                span: float = SHAPE_SPAN) -> float:
    """1 while the mask's solidity is within ``tolerance`` of the reference (the keyframe's), 0 once it has lost
    ``tolerance + span``: a chamber's area changes over the cycle, its convexity hardly does, while a mask
    leaking through a valve or along a wall grows legs and bites."""
    deficit = solidity_ref - solidity_now
    return float(np.clip(1.0 - (deficit - tolerance) / span, 0.0, 1.0))
