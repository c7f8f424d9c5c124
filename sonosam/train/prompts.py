"""Training's iterative prompt sampler, built on the evaluation click simulator
(``sonosam.evaluate.clicks.ClickSimulator``) so that training and evaluation click by the same rules.

First prompt: with equal probability a positive click near the centroid (moved by up to ``point_jitter`` x
the structure's size, kept inside the structure) or a loose box (each side moved by up to ``box_jitter``
x the box's size). Each later iteration adds one click in the largest error region of the current
prediction, at a random pixel of it: positive on a false negative, negative on a false positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..evaluate.clicks import ClickSimulator
from ..prompts import Prompts

__all__ = ["PromptSampler", "PromptTensors", "to_model_inputs"]


class PromptSampler:
    def __init__(self, rng: np.random.Generator | int | None = None, point_jitter: float = 0.2,
                 box_jitter: float = 0.2, start_kinds=("point", "box"), point_start: float | None = None):
        self.simulator = ClickSimulator(rng=rng, point_jitter=point_jitter, box_jitter=box_jitter, mode="random")
        self.start_kinds = tuple(start_kinds)
        self.point_start = point_start   # probability of a click start (None: uniform over start_kinds)

    @property
    def rng(self) -> np.random.Generator:
        return self.simulator.rng

    def choose_start(self) -> str:
        if self.point_start is None or set(self.start_kinds) != {"point", "box"} or self.point_start == 0.5:
            return self.simulator.choose_start(self.start_kinds)   # the default: same draws as before
        return "point" if self.rng.random() < self.point_start else "box"

    def start(self, gt: np.ndarray, kind: str | None = None) -> Prompts:
        return self.simulator.start(gt, kind or self.choose_start())

    def correct(self, pred: np.ndarray, gt: np.ndarray, prompts: Prompts):
        """(the corrective click, ``prompts`` with it added); (None, ``prompts``) when ``pred`` is perfect."""
        return self.simulator.correct(pred, gt, prompts)


@dataclass
class PromptTensors:
    """A batch of prompts of one shape (same number of clicks, all with or all without a box), in the
    encoder's input coordinates, as ``PromptEncoder`` takes them."""
    points: tuple[torch.Tensor, torch.Tensor] | None   # (B, N, 2) float, (B, N) int
    boxes: torch.Tensor | None                          # (B, 4) float


def to_model_inputs(prompts: list[Prompts], sizes: list[tuple[int, int]], transform,
                    device: torch.device) -> PromptTensors:
    """Pixel prompts -> encoder-input coordinates (the same ``ResizeLongestSide`` rules as ``SamModel.decode``)."""
    has_box = {p.box is not None for p in prompts}
    counts = {len(p.points) for p in prompts}
    if len(has_box) != 1 or len(counts) != 1:
        raise ValueError("A prompt batch must share its shape (clicks, box); group it first.")
    points = boxes = None
    if counts.pop():
        coords = np.stack([transform.apply_coords(np.asarray(p.points, float), size) for p, size in zip(prompts, sizes)])
        labels = np.asarray([p.labels for p in prompts])
        points = (torch.as_tensor(coords, dtype=torch.float, device=device),
                  torch.as_tensor(labels, dtype=torch.int, device=device))
    if has_box.pop():
        boxes = torch.as_tensor(np.stack([transform.apply_boxes(np.asarray(p.box, float)[None], size)[0]
                                          for p, size in zip(prompts, sizes)]), dtype=torch.float, device=device)
    return PromptTensors(points, boxes)
