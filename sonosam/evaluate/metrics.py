"""Metrics of the SonoSAM papers: pure functions over masks, Dice curves and per-frame tracking records.

Conventions (also in docs/evaluate.md):

* Dice is a fraction in [0, 1]; two empty masks have Dice 1 (nothing to find, nothing found).
* A Dice curve is the Dice after each interaction 1..N (interaction 1 is the first click or the box).
* ``NoC@t`` = the first interaction k (1-based) whose Dice >= t; when the curve never reaches t within its
  N interactions, N + 1 (the curve's length plus one, or ``max_clicks + 1`` when given). This is a lower
  bound of the true count, so means over images with failures are optimistic; read them with ``FR@t``.
* ``FR@t`` = percentage of images whose Dice never reaches t within the N interactions.
* ``MaxDSC`` = mean over images of each image's highest Dice over the N interactions.
* NaN entries in a curve mean "no measurement" (e.g. clicks a box-only model cannot take); they never
  count as reaching a threshold and are skipped by means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..masks import dice, iou  # one home for the overlap measures; re-exported here for evaluation users

__all__ = [
    "dice", "iou", "noc", "failed", "max_dice", "mean_curve", "summarize_curves",
    "FrameRecord", "interventions_per_loop", "dice_drop_before_intervention", "clicks_per_loop",
    "summarize_tracking",
]


def _curve(curve) -> np.ndarray:
    curve = np.asarray(curve, dtype=float)
    if curve.ndim != 1:
        raise ValueError(f"A Dice curve is 1D (one value per interaction); got shape {curve.shape}.")
    return curve


def noc(curve: Sequence[float], threshold: float, max_clicks: int | None = None) -> int:
    """Number of clicks to reach ``threshold`` (1-based); ``max_clicks + 1`` (default: ``len(curve) + 1``)
    when it is never reached."""
    curve = _curve(curve)
    hits = np.nonzero(np.nan_to_num(curve, nan=-np.inf) >= threshold)[0]
    if hits.size:
        return int(hits[0]) + 1
    return (len(curve) if max_clicks is None else int(max_clicks)) + 1


def failed(curve: Sequence[float], threshold: float) -> bool:
    """True when the curve never reaches ``threshold`` (the per-image event counted by ``FR@t``)."""
    curve = _curve(curve)
    return not bool(np.any(np.nan_to_num(curve, nan=-np.inf) >= threshold))


def max_dice(curve: Sequence[float]) -> float:
    """Highest Dice along the curve (NaN entries skipped; NaN if there is none)."""
    curve = _curve(curve)
    return float(np.nanmax(curve)) if np.isfinite(curve).any() else float("nan")


def mean_curve(curves: Iterable[Sequence[float]], length: int | None = None) -> np.ndarray:
    """Mean Dice per interaction over images (NaN-aware); shorter curves are padded with NaN."""
    curves = [_curve(c) for c in curves]
    if not curves:
        return np.full(length or 0, np.nan)
    length = length or max(len(c) for c in curves)
    table = np.full((len(curves), length), np.nan)
    for row, curve in zip(table, curves):
        row[: min(length, len(curve))] = curve[:length]
    with np.errstate(all="ignore"):
        counts = np.isfinite(table).sum(axis=0)
        sums = np.nansum(table, axis=0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def summarize_curves(curves: Sequence[Sequence[float]], thresholds: Sequence[float] = (0.8, 0.9),
                     max_clicks: int | None = None) -> dict:
    """Aggregate metrics over images: ``n``, ``mean_dice`` (per interaction), ``noc@80``... (mean NoC),
    ``fr@80``... (failure rate in %), ``max_dsc`` (mean per-image maximum). Keys use the threshold in %."""
    curves = [_curve(c) for c in curves]
    n_max = max_clicks or (max(len(c) for c in curves) if curves else 0)
    out: dict = {"n": len(curves), "mean_dice": mean_curve(curves, n_max)}
    for t in thresholds:
        name = f"{round(t * 100):d}"
        out[f"noc@{name}"] = float(np.mean([noc(c, t, n_max) for c in curves])) if curves else float("nan")
        out[f"fr@{name}"] = 100.0 * float(np.mean([failed(c, t) for c in curves])) if curves else float("nan")
    maxima = [max_dice(c) for c in curves]
    out["max_dsc"] = float(np.nanmean(maxima)) if np.isfinite(maxima).any() else float("nan")
    return out


# --- tracking ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRecord:
    """What a tracking run did on one frame of one loop.

    ``dice``: Dice of the mask the tracker proposed for this frame, before any correction (for the
    first frame: of the initial interactive segmentation, after its clicks). ``intervened``: the user (or
    the simulated user) corrected this frame. ``clicks``: clicks spent on this frame (initial segmentation
    included on the first frame). ``dice_after``: Dice once corrected (defaults to ``dice``)."""

    loop: str
    frame: int
    dice: float
    intervened: bool = False
    clicks: int = 0
    dice_after: float | None = None

    @property
    def final_dice(self) -> float:
        return self.dice if self.dice_after is None else self.dice_after


def _loops(records: Iterable[FrameRecord]) -> dict[str, list[FrameRecord]]:
    loops: dict[str, list[FrameRecord]] = {}
    for record in records:
        loops.setdefault(record.loop, []).append(record)
    for frames in loops.values():
        frames.sort(key=lambda r: r.frame)
    return loops


def interventions_per_loop(records: Iterable[FrameRecord], count_first_frame: bool = False) -> float:
    """Mean number of interventions per loop. The first frame's initial segmentation is not an
    intervention unless ``count_first_frame``."""
    loops = _loops(records)
    if not loops:
        return float("nan")
    counts = [sum(r.intervened for i, r in enumerate(frames) if count_first_frame or i > 0)
              for frames in loops.values()]
    return float(np.mean(counts))


def dice_drop_before_intervention(records: Iterable[FrameRecord], reference: str = "last_corrected") -> float:
    """Mean Dice drop (in Dice points x100) at the frames that triggered an intervention (first frames
    excluded). ``reference="last_corrected"``: the drop from the final Dice of the last frame the user
    set (the first frame or the previous intervention) to the tracker's Dice on the triggering frame,
    i.e. how far tracking drifted before the user was asked. ``reference="previous_frame"``: the drop
    from the previous frame's final Dice. NaN when no intervention happened."""
    if reference not in ("last_corrected", "previous_frame"):
        raise ValueError("reference must be 'last_corrected' or 'previous_frame'")
    drops = []
    for frames in _loops(records).values():
        anchor = None
        for index, record in enumerate(frames):
            if index > 0 and record.intervened:
                base = anchor if reference == "last_corrected" else frames[index - 1].final_dice
                drops.append(100.0 * (base - record.dice))
            if index == 0 or record.intervened:
                anchor = record.final_dice
    return float(np.mean(drops)) if drops else float("nan")


def clicks_per_loop(records: Iterable[FrameRecord]) -> float:
    """Mean total clicks per loop (initial segmentation and all corrections)."""
    loops = _loops(records)
    if not loops:
        return float("nan")
    return float(np.mean([sum(r.clicks for r in frames) for frames in loops.values()]))


def summarize_tracking(records: Iterable[FrameRecord]) -> dict:
    """The tracking table's columns: loops, frames, mean Dice (tracker, before corrections), mean final
    Dice, interventions per loop, Dice drop before intervention (points), clicks per loop."""
    records = list(records)
    loops = _loops(records)
    return {
        "loops": len(loops),
        "frames": len(records),
        "mean_dice": float(np.mean([r.dice for r in records])) if records else float("nan"),
        "mean_final_dice": float(np.mean([r.final_dice for r in records])) if records else float("nan"),
        "interventions_per_loop": interventions_per_loop(records),
        "dice_drop_before_intervention": dice_drop_before_intervention(records),
        "clicks_per_loop": clicks_per_loop(records),
    }
