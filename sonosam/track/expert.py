"""A simulated expert answering the tracker's intervention requests, and the tracking evaluation loop.

The expert follows the SonoSAM tracking protocol: when asked, it looks at the proposed mask; if its
Dice with the ground truth is already >= ``target`` it accepts it (0 clicks); otherwise it corrects
until Dice >= ``target`` (or ``max_clicks``), taking the cheaper of two routes:

* **model route**: with a click-capable model (SAM, SonoSAM), corrective clicks from the shared click
  simulator (``sonosam.evaluate.next_click``: the largest error region, its innermost point) added to
  the proposal's logits; with a box-only model (LiteMedSAM, the default), a tight box around the
  structure, **counted as 2 clicks** (its two opposite corners, which is how a box is drawn), then
  brush strokes if still short;
* **brush route**: brush strokes on the proposal, each filling or erasing the largest connected error
  region, **counted as 1 click per stroke** (generous to the expert: a real stroke along a thin
  crescent takes some care).

Clicks per loop therefore count: box corners, clicks and strokes; an accept costs 0 clicks but is an
intervention. Metrics come from ``sonosam.evaluate.metrics`` (FrameRecord, summarize_tracking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluate.clicks import box_from_mask, error_regions, next_click
from ..evaluate.metrics import FrameRecord, dice, summarize_tracking
from .tracker import Tracker

__all__ = ["SimulatedExpert", "Correction", "track_with_expert"]


@dataclass
class Correction:
    mask: np.ndarray
    clicks: int
    dice: float
    route: str          # "accept", "box", "clicks", "brush"


class SimulatedExpert:
    def __init__(self, target: float = 0.9, max_clicks: int = 10, box_clicks: int = 2):
        self.target, self.max_clicks, self.box_clicks = target, max_clicks, box_clicks

    def _brush(self, mask: np.ndarray, gt: np.ndarray, clicks: int) -> tuple[np.ndarray, int]:
        mask = mask.copy()
        while dice(mask, gt) < self.target and clicks < self.max_clicks:
            regions = error_regions(mask, gt)
            if not regions:
                break
            region, label, _ = regions[0]
            mask[region] = bool(label)
            clicks += 1
        return mask, clicks

    def segment(self, tracker: Tracker, frame: int, gt: np.ndarray, proposal: np.ndarray | None = None) -> Correction:
        """Correct ``proposal`` (or segment from scratch when None) on ``frame`` against ``gt``."""
        gt = np.asarray(gt, bool)
        if proposal is not None and dice(proposal, gt) >= self.target:
            return Correction(proposal.copy(), 0, dice(proposal, gt), "accept")
        options = []
        kinds = tracker.predictor.model.spec.prompt_kinds
        if "point" in kinds:
            points, labels, mask, logits, clicks = [], [], proposal if proposal is not None else np.zeros_like(gt), None, 0
            while dice(mask, gt) < self.target and clicks < self.max_clicks:
                click = next_click(mask, gt)
                if click is None:
                    break
                points.append(click.xy)
                labels.append(click.label)
                pred = tracker.segment(frame, points=points, labels=labels, mask_logits=logits)
                mask, logits, clicks = pred.mask, pred.logits, clicks + 1
            options.append(Correction(mask, clicks, dice(mask, gt), "clicks"))
        else:
            mask = tracker.segment(frame, box=box_from_mask(gt)).mask
            mask, clicks = self._brush(mask, gt, self.box_clicks)
            options.append(Correction(mask, clicks, dice(mask, gt), "box"))
        if proposal is not None:
            mask, clicks = self._brush(proposal, gt, 0)
            options.append(Correction(mask, clicks, dice(mask, gt), "brush"))
        # The cheaper route that reaches the target; if none does, the best Dice.
        reached = [o for o in options if o.dice >= self.target]
        return min(reached, key=lambda o: o.clicks) if reached else max(options, key=lambda o: o.dice)


def track_with_expert(tracker: Tracker, gt: dict[str, np.ndarray], start_frame: int = 0,
                      expert: SimulatedExpert | None = None, loop: str = "loop",
                      max_rounds: int = 1000) -> tuple[list[FrameRecord], dict]:
    """Run ``tracker`` on a loop with ground truth ``gt`` (name -> (T, H, W) masks), the expert segmenting
    each object on ``start_frame`` and answering every intervention request. Returns one FrameRecord per
    object and frame (loop id ``f"{loop}:{name}"``) and ``summarize_tracking`` of them plus extras."""
    expert = expert or SimulatedExpert()
    answered: dict[tuple[str, int], tuple[float, int, float]] = {}  # (name, frame) -> (dice before, clicks, after)
    was_pausing = tracker.pause
    tracker.pause = True
    for name, masks in gt.items():
        correction = expert.segment(tracker, start_frame, masks[start_frame])
        tracker.add_object(name, start_frame, mask=correction.mask)
        answered[(name, start_frame)] = (correction.dice, correction.clicks, correction.dice)
    rounds = 0
    report = tracker.run()
    while report.paused and rounds < max_rounds:
        rounds += 1
        for event in report.events:
            proposal = tracker.result(event.frame, event.object).mask
            truth = gt[event.object][event.frame]
            correction = expert.segment(tracker, event.frame, truth, proposal)
            if correction.route == "accept":
                tracker.accept(event.frame, event.object)
            else:
                tracker.correct(event.frame, event.object, mask=correction.mask)
            answered[(event.object, event.frame)] = (dice(proposal, truth), correction.clicks, correction.dice)
        report = tracker.run()
    tracker.pause = was_pausing
    records = []
    for name, masks in gt.items():
        for t in range(tracker.n_frames):
            final = tracker.result(t, name)
            final_dice = dice(final.mask, masks[t]) if final is not None else 0.0
            if (name, t) in answered:
                before, clicks, after = answered[(name, t)]
                records.append(FrameRecord(f"{loop}:{name}", t, before, True, clicks, final_dice))
            else:
                records.append(FrameRecord(f"{loop}:{name}", t, final_dice))
    summary = summarize_tracking(records)
    summary["min_final_dice"] = float(min(r.final_dice for r in records))
    summary["encoded_frames"] = len(tracker.model_frames)
    return records, summary
