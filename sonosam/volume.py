"""Carry a structure through a CT/MRI volume slice by slice (SAM^Med-style prompt propagation).

    from sonosam.volume import propagate, Seed
    result = propagate(predictor, volume, axis=0, seeds=[Seed(80, box=(x0, y0, x1, y1))])
    result.mask                 # bool [k, j, i], the volume's shape
    result.slices[81]           # SliceInfo(index=81, status="propagated", score=0.93, area=412, reason="")

Each next slice is prompted from the previous slice's result (see docs/volume.md):

- the previous mask, restricted to the pixels that pass SAM^Med's intensity-consistency rule
  ``|X_{t+1}(p) - X_t(p)| < lambda * std(X_t[L_t])``, gives the box (its bounding box plus a margin);
  box-only models (the default LiteMedSAM) get only that box;
- models that take points also get positive points picked inside the consistent pixels (deepest first);
- models that take mask prompts also get the previous slice's mask as it was kept (after `keep_component` and
  the intensity candidate: what the user sees), as logits; off by default for models not trained with mask
  prompts (`PropagationOptions.mask_prompt`). The slice decoder (`sonosam.train.slice_decoder`) is trained on
  exactly this prompt.

A front stops when the structure ends (`stop_reason`): at once on a break with the previous slice (too few
intensity-consistent pixels, the mask vanishes, its area jumps by more than `max_growth`, or it hardly
overlaps the previous mask: it ran into a neighbour); and when the slices turn weak or drift away from the
anchor (predicted IoU below `min_score`, area below `min_area_ratio` of the anchor's, mean intensity or
image-embedding feature far from the anchor's) on `patience` slices in a row, so that one poor slice does not
end a front. The slice where it stopped is reported with status "stopped" and left empty, as are the weak
slices after it.

A seed's answer is checked against its box first (sonosam.seed_check): when the model is unsure and a contrasted
structure that its mask avoids spans the box, the suggested alternative propagates instead (`result.seed_checks`;
a seed of clicks alone is checked too, for the alternatives it offers, and keeps the model's answer).
Anchors that stand out from their surroundings (a ventricle, an air space) also try the model-free intensity
candidate on every slice and keep whichever continues the previous mask better (`SliceInfo.candidate`).

Seeds are slices the user prompted (status "seed": the model segments them from their box/points) or
whose mask the user drew or accepted (status "accepted": kept exactly). A re-run with `previous=` keeps
the earlier seeds and accepted slices as anchors and recomputes only the stretches between and beyond
the anchors that changed; everything else is copied unchanged. Embeddings come from the predictor's
cache (keyed by volume id, axis and slice) and are encoded ahead of the propagation front in the
background. `progress(done, total, info)` reports each slice; `cancel` (a threading.Event or a callable
returning True) stops the run at the next slice and returns what is done, with `result.cancelled` set.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage

from .errors import InputImageError, PromptError
from .image import AXES, axis_index, take_slice as slice_of, volume_window
from .masks import bounding_box, box_with_margin, content_hash
from .models import mask_to_logits
from .models.sam import encoder_id
from .predictor import Predictor
from .prompts import Prompts
from .seed_check import SURE_CONTRAST, _fills_box, _otsu, check_seed, contrast_polarity, structure_candidate
from .track.motion import FlowEstimator, follow_slice

__all__ = ["Seed", "SliceInfo", "PropagationOptions", "PropagationResult", "propagate", "naive_baseline",
           "stop_reason", "slice_of", "axis_index", "consistent_pixels", "keep_touching", "volume_window", "AXES"]

SEED, ACCEPTED, PROPAGATED, STOPPED = "seed", "accepted", "propagated", "stopped"


@dataclass
class Seed:
    """A slice the propagation starts from: prompts (box and/or points, in that slice's pixel coordinates,
    x = column, y = row) that the model answers, or a `mask` (2D bool) the user drew or accepted, which
    is kept exactly."""
    index: int
    box: Sequence[float] | None = None
    points: Sequence[Sequence[float]] | None = None
    labels: Sequence[int] | None = None
    mask: np.ndarray | None = None

    def __post_init__(self):   # lists or arrays, as a console user gives them: plain lists from here on
        try:
            integral = float(self.index).is_integer()
        except (TypeError, ValueError):
            integral = False
        if not integral or isinstance(self.index, bool):
            raise PromptError(f"Seed index {self.index!r} is not a slice number; give an integer index along the axis.")
        self.index = int(self.index)
        if self.points is not None:
            self.points = [tuple(float(v) for v in p) for p in self.points] or None
        if self.labels is not None:
            self.labels = [int(v) for v in self.labels] or None

    @property
    def accepted(self) -> bool:
        return self.mask is not None

    @property
    def empty(self) -> bool:
        """An accepted empty mask: the user says the structure is not on this slice (fronts end there)."""
        return self.mask is not None and not np.asarray(self.mask).any()


@dataclass
class SliceInfo:
    index: int
    status: str              # "seed", "accepted", "propagated" or "stopped"
    score: float = float("nan")  # predicted IoU (nan for accepted masks)
    area: int = 0            # pixels in this slice's mask (for "stopped": of the rejected prediction)
    reason: str = ""         # why a front stopped here (for a seed: what the seed check found)
    source: int | None = None  # the anchor slice this result was propagated from
    candidate: str = "model"  # which answer was kept: "model", "intensity" (the high-contrast fallback) or
                             # "second opinion" (the predictor's model where the carrier's answer was weak)
    flag: str = ""           # a weak sign on a slice the front kept (e.g. growth against its trend): worth a look


@dataclass
class PropagationOptions:
    box_margin: float = 0.2          # box = consistent pixels' bounding box + margin * its size (at least 2 px)
    consistency_lambda: float = 1.0  # SAM^Med lambda: |X_t+1 - X_t| < lambda * std(X_t[mask])
    n_points: int = 3                # positive points in a carrier's prompt, if it takes points (0: none)
    model_points: bool = False       # True: the predictor's own model gets them too (the click decoders answer a
                                     # large structure worse with them than with the box alone: docs/volume.md)
    mask_prompt: bool | None = None  # previous mask as mask prompt; None: only for models trained with masks
    max_box_size: float | None = 1.25  # box sides at most this multiple of the anchor mask's bounding box
    # stop rules (see stop_reason); "anchor": the seed or accepted slice the front started from
    min_consistent: float = 0.2      # stop at once when fewer of the previous mask's pixels pass the rule
    min_area: int = 10               # stop at once below this many pixels
    max_growth: float = 1.8          # stop at once when the area grows more than this from one slice to the next
    min_overlap: float = 0.3         # stop at once when |new & prev| / |new| falls below this (jumped elsewhere)
    min_score: float = 0.5           # weak below this predicted IoU ...
    min_score_anchor: float | None = 0.8  # ... or below this share of the anchor's own predicted IoU, if lower (a
                                     # model whose scores run low, e.g. litemedsam_clicks, is judged against
                                     # its own anchor; never stricter than min_score)
    unscored_contrast: float | None = SURE_CONTRAST  # fronts whose anchor stands out unmistakably (at least this
                                     # much, measured as for min_contrast) are not judged by the predicted IoU,
                                     # only by the other rules: there the model's answer competes with the intensity
                                     # candidate, and a click decoder's IoU can run low on slices it segments well;
                                     # parcels of a larger tissue stand out less, and their low score is often the
                                     # only sign of their end (None: every front is judged; docs/volume.md)
    min_area_ratio: float = 0.05     # weak below this share of the anchor's area
    max_intensity_shift: float | None = 2.0  # weak when the mask's mean intensity is more than this many anchor
                                     # standard deviations from the anchor's mean (None: off)
    shift_contrast_floor: float | None = 0.1  # for anchors that stand out, the shift's unit is at least this share
                                     # of their contrast to their 3 px ring: a thresholded class's SD is cut short
                                     # (None: the anchor's SD alone; docs/volume.md, stop 53)
    min_similarity: float | None = 0.7  # weak when the cosine similarity of the mask's mean image-embedding
                                     # feature to the anchor's falls below this (None: off)
    patience: int = 3                # stop after this many weak slices in a row (they are left empty)
    # growth (weak, like the drift rules): a front that balloons past a structure's end
    max_trend_growth: float | None = 1.3  # weak when the area grows more than this in one slice while the front's
                                     # own trend (mean ratio over the last 3 slices) was not growing (None: off)
    max_extent_ratio: float | None = 1.5  # weak when the mask's width or height exceeds this multiple of the
                                     # anchor's (None: off)
    flag_fill: bool = True           # weak when the mask runs along all four sides of its prompt box (it took
                                     # the box's shape: the structure is wider than the box lets it be)
    keep_component: bool = True      # keep the connected parts of the mask that touch the previous mask
    max_slices: int | None = None    # at most this many slices from each seed in each direction
    direction: str = "both"          # "both", "forward" (increasing index) or "backward"
    span: tuple[int, int] | None = None  # the structure's first and last slice, as the user gives them: no front
                                     # runs past them; inside, the stop rules judge as without them (None: the
                                     # rules alone decide where the structure ends)
    lookahead: int = 4               # slices encoded ahead of the front in the background
    seed_check: bool = True          # a seed whose model answer disagrees with its box takes the suggested
                                     # alternative (sonosam.seed_check); the check is kept in result.seed_checks
    seed_contrast_switch: bool = True  # the check's contrast_switch (an unsure answer that does not stand out
                                     # gives way to the part of the box that does, where that part is whole)
    seed_three_classes: bool = True  # the check also offers the darkest and brightest of three intensity classes
    follow_motion: bool = True       # pull the previous slice's mask onto the next by optical flow before prompting
                                     # it (sonosam.track.motion.follow_slice; False: prompt where the mask was)
    min_contrast: float | None = 2.0  # anchors at least this contrasted with their surroundings ((mean inside -
                                     # mean of a 3 px ring) / SD inside) also try the intensity candidate on
                                     # each slice and keep whichever overlaps the previous mask more (None: off)
    window: tuple[float, float] | None = None  # intensity window; None: volume_window(volume)
    # re-runs (previous=): a correction's front runs outward from the corrected slice only until its mask agrees
    # with the previous run's (IoU >= agree_iou) or reaches slices a nearer earlier anchor holds; the rest of
    # the previous result stays (False: recompute whole stretches from both anchors, as before)
    local_rerun: bool = True
    agree_iou: float = 0.9
    # a second decoder for the propagated slices: a model (name or checkpoint path) sharing the predictor's image
    # encoder, e.g. the slice decoder (sonosam.train.slice_decoder), trained to continue a carried mask. It answers
    # the fronts of structures that are not high-contrast; seeds and high-contrast fronts (the intensity candidate
    # leads there) stay with the predictor's model. "auto": the registered model that declares it carries for the
    # predictor's model (ModelSpec.carries_for: litemedsam_slices for litemedsam_clicks), else none; None: none
    carrier: str | None = "auto"
    second_opinion: bool = False     # where a carried slice is weak, the predictor's own model answers it afresh
                                     # (no mask prompt) and that answer is kept when no stop rule flags it


@dataclass
class PropagationResult:
    mask: np.ndarray                  # bool, the volume's shape
    axis: int
    slices: dict[int, SliceInfo] = field(default_factory=dict)   # every slice that was segmented or tried
    cancelled: bool = False
    seconds: float = 0.0
    encoder_calls: int = 0
    decoded: int = 0                  # slices decoded in this run (those recomputed)
    anchors: dict[int, Seed] = field(default_factory=dict, repr=False)  # for a re-run: index -> its Seed
    seed_checks: dict = field(default_factory=dict, repr=False)  # seed index -> sonosam.seed_check.SeedCheck
    carrier: str | None = None        # the model that answered the propagated slices (options.carrier), if any
    volume_id: str | None = None      # the volume it was run on (a re-run's `previous` must be of the same)
    replaced: list[int] = field(default_factory=list)  # a re-run's slices, other than its new seeds, whose earlier
                                      # mask it changed (IoU below agree_iou): a correction reaches past its own
                                      # slice, for better or worse, and these are the slices to review
    added: list[int] = field(default_factory=list)  # a re-run's slices, other than its new seeds, that the earlier
                                      # result left empty and it filled: a front from a correction can run past
                                      # where the earlier run stopped, and these are to review too

    def slice_mask(self, index: int) -> np.ndarray:
        return slice_of(self.mask, self.axis, index)

    def status(self, index: int) -> str:
        info = self.slices.get(index)
        return info.status if info else ""

    def extent(self) -> tuple[int, int] | None:
        """(first, last) slice with a non-empty mask along the axis."""
        filled = [i for i, s in self.slices.items() if s.status != STOPPED and s.area > 0]
        return (min(filled), max(filled)) if filled else None

    def accept(self, indices: Iterable[int]) -> None:
        """Mark slices as accepted by the user: a re-run keeps them and propagates from them."""
        for index in indices:
            info = self.slices.get(index)
            if info is None or info.status == STOPPED:
                raise PromptError(f"Slice {index} has no mask to accept.")
            info.status = ACCEPTED
            self.anchors[index] = Seed(index, mask=self.slice_mask(index).copy())

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for info in self.slices.values():   # an accepted empty slice is an end the user set
            kind = "end you set" if info.status == ACCEPTED and not info.area else info.status
            counts[kind] = counts.get(kind, 0) + 1
        extent = self.extent()
        stops = [f"{i} ({s.reason})" for i, s in sorted(self.slices.items()) if s.status == STOPPED]
        # kept slices a stop rule found weak (a dip the front recovered from, or the end of its range): where to look
        weak = sorted(i for i, s in self.slices.items() if s.flag and s.status != STOPPED and self.slice_mask(i).any())
        return (f"{int(self.mask.sum())} voxels on slices {extent[0]}..{extent[1]}" if extent else "empty") + \
            f"; {', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}" + \
            (f"; stopped at {', '.join(stops)}" if stops else "") + \
            (f"; carried by {self.carrier}" if self.carrier else "") + \
            (f"; weak on {len(weak)} slice{'s' if len(weak) > 1 else ''} ({_ranges(weak)}): worth a look"
             if weak else "") + \
            (f"; changed the earlier mask on {len(self.replaced)} slice{'s' if len(self.replaced) > 1 else ''} "
             f"({_ranges(self.replaced)}): review them" if self.replaced else "") + \
            (f"; filled {len(self.added)} slice{'s' if len(self.added) > 1 else ''} the earlier run left empty "
             f"({_ranges(self.added)}): review them" if self.added else "") + \
            (" (cancelled)" if self.cancelled else "")


def _ranges(indices: list[int]) -> str:
    """[3, 4, 5, 9] -> "3..5, 9"."""
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ", ".join(f"{a}..{b}" if b > a else f"{a}" for a, b in runs)


# ------------------------------------------------------------------------------------------------ helpers

def consistent_pixels(prev_image: np.ndarray, next_image: np.ndarray, prev_mask: np.ndarray,
                      lam: float) -> np.ndarray:
    """SAM^Med's intensity-consistency rule: pixels p of the previous mask L_t with
    |X_{t+1}(p) - X_t(p)| < lam * std(X_t[L_t])."""
    prev = prev_image.astype(np.float32)
    values = prev[prev_mask]
    if values.size == 0:
        return np.zeros_like(prev_mask)
    tolerance = lam * float(values.std())
    if tolerance <= 0:  # a flat structure: allow a tiny tolerance instead of nothing
        tolerance = 1e-6 + 0.01 * float(np.abs(values).max(initial=1.0))
    return prev_mask & (np.abs(next_image.astype(np.float32) - prev) < tolerance)


def stop_reason(opt: PropagationOptions, *, share: float, area: int, prev_area: int, anchor_area: int,
                score: float, overlap: float, intensity_shift: float | None = None,
                similarity: float | None = None, trend: float | None = None, extent_ratio: float | None = None,
                fills_box: bool = False, anchor_score: float = float("nan")) -> tuple[str, bool]:
    """Why a front should stop at a slice ("" if it should not), and whether that alone stops it.

    Breaks with the previous slice stop the front at once (True). Weak or drifting slices (False) stop it only
    on `opt.patience` slices in a row: on Colin27's AAL structures the model's IoU score dips on single slices
    inside a structure, and past a structure's end it keeps scoring high on the neighbouring tissue, which
    only a gradual drift away from the anchor's look gives away (docs/volume.md).
    overlap: |new & prev| / |new|; intensity_shift: (mean under the mask - anchor's mean) / anchor's SD;
    similarity: cosine of the mask's pooled image-embedding feature to the anchor's; trend: the front's mean area
    ratio over its last slices (growth is judged against it); extent_ratio: the mask's width or height over the
    anchor's, the larger; fills_box: the mask runs along all four sides of its prompt box."""
    # SAM^Med's rule: the intensities under the previous mask did not carry over to this slice
    if share < opt.min_consistent:
        return f"only {share:.0%} of the previous mask is intensity-consistent", True
    if area < opt.min_area:
        return ("the mask vanished" if area == 0 else f"area {area} px < {opt.min_area} px"), True
    # a jump: the mask ran into a neighbour or moved off the previous one
    if area > opt.max_growth * prev_area:
        return f"area grew {area / max(prev_area, 1):.1f}x (ran into a neighbour?)", True
    if overlap < opt.min_overlap:
        return "the mask moved away from the previous one", True
    # weak: the model itself is unsure, or the mask shrank to a sliver of the anchor's
    floor = opt.min_score
    if opt.min_score_anchor is not None and np.isfinite(anchor_score):
        floor = min(floor, opt.min_score_anchor * anchor_score)
    if score < floor:
        return f"predicted IoU {score:.2f} < {floor:.2f}", False
    if area < opt.min_area_ratio * anchor_area:
        return f"area {area} px < {opt.min_area_ratio:.0%} of the anchor's", False
    # drift: the mask no longer looks like the anchor's structure (brighter/darker tissue, other features)
    if opt.max_intensity_shift is not None and intensity_shift is not None \
            and abs(intensity_shift) > opt.max_intensity_shift:
        return f"mean intensity {intensity_shift:+.1f} SD from the anchor's", False
    if opt.min_similarity is not None and similarity is not None and similarity < opt.min_similarity:
        return f"image features drifted from the anchor's (similarity {similarity:.2f} < {opt.min_similarity})", False
    # growth: the front balloons (a structure tapering towards its end does not grow against its own trend)
    if opt.max_trend_growth is not None and trend is not None and trend <= 1.0 and prev_area \
            and area > opt.max_trend_growth * prev_area:
        return f"area grew {area / prev_area:.1f}x against its trend ({trend:.2f}x a slice)", False
    if opt.max_extent_ratio is not None and extent_ratio is not None and extent_ratio > opt.max_extent_ratio:
        return f"{extent_ratio:.1f}x as wide as the anchor", False
    if opt.flag_fill and fills_box:
        return "the mask fills its box (runs along all four sides)", False
    return "", False


def next_slice_prompt(prev_image: np.ndarray, image: np.ndarray, prev_mask: np.ndarray, anchor_box, opt,
                      points: bool, mask: bool) -> tuple[Prompts, float]:
    """The prompt for the slice after ``prev_image`` (SAM^Med's rule): a box around the previous mask's pixels
    that pass the intensity-consistency test (the whole previous mask when too few do), with a margin, clamped
    to ``opt.max_box_size`` x the anchor's box; ``points``: up to ``opt.n_points`` clicks deep inside those
    pixels; ``mask``: the previous mask (as logits) as the mask prompt. Returns it with the share
    of consistent pixels. Propagation and the slice decoder's training (sonosam.train.slice_decoder) both use it."""
    consistent = consistent_pixels(prev_image, image, prev_mask, opt.consistency_lambda)
    share = float(consistent.sum() / max(prev_mask.sum(), 1))
    region = consistent if share >= opt.min_consistent and consistent.any() else prev_mask
    box = box_with_margin(region, opt.box_margin)
    if opt.max_box_size is not None and anchor_box is not None:
        box = _clamp_box(box, anchor_box, opt.max_box_size, image.shape)
    clicks = _interior_points(consistent, opt.n_points) if points else None
    return Prompts(clicks or None, None, box, mask_to_logits(prev_mask) if mask else None), share


def _clamp_box(box, anchor_box, factor: float, shape) -> tuple[float, float, float, float]:
    """Shrink `box` about its centre so that no side exceeds `factor` times `anchor_box`'s (keeps a front
    from inflating slice after slice)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    max_w = factor * (anchor_box[2] - anchor_box[0] + 1)
    max_h = factor * (anchor_box[3] - anchor_box[1] + 1)
    w, h = min(x1 - x0, max_w), min(y1 - y0, max_h)
    height, width = shape
    return (max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(width - 1.0, cx + w / 2), min(height - 1.0, cy + h / 2))


def _interior_points(region: np.ndarray, n: int) -> list[tuple[float, float]]:
    """Up to n points deep inside `region`: the deepest pixel, then the deepest ones far from those taken."""
    if n <= 0 or not region.any():
        return []
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    points: list[tuple[float, float]] = []
    score = depth.copy()
    rows, cols = np.indices(region.shape)
    for _ in range(n):
        r, c = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[r, c] <= 0:
            break
        points.append((float(c), float(r)))
        # farther from the points taken is better: damp the depth near them
        score = np.minimum(score, np.hypot(rows - r, cols - c) * 0.5)
    return points


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


def keep_touching(mask: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """The connected parts of `mask` that overlap `prev` (all of it when none does)."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    touching = np.unique(labels[mask & prev])
    touching = touching[touching > 0]
    if touching.size == 0:
        return mask
    return np.isin(labels, touching)


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def volume_cache_id(volume: np.ndarray) -> str:
    """The volume's name in the embedding cache when the caller gives none (slices are keyed (id, axis, index))."""
    return "vol-" + content_hash(volume, digest_size=12)


def _as_predictor(predictor_or_model) -> Predictor:
    if isinstance(predictor_or_model, Predictor):
        return predictor_or_model
    if hasattr(predictor_or_model, "encode") and hasattr(predictor_or_model, "decode"):
        return Predictor(predictor_or_model)
    raise TypeError("Give a sonosam Predictor or a model from sonosam.models.load_model().")


def carrier_for(model_name: str) -> str | None:
    """The registered model that carries propagation for ``model_name`` by default (PropagationOptions.carrier
    "auto"), or None. A model whose own decoder answers box sessions only propagates as its partner does
    (`ModelSpec.box_sessions_of`), so it takes the partner's carrier."""
    from .models import list_models

    specs = list_models()
    model_name = next((spec.box_sessions_of for spec in specs if spec.name == model_name and spec.box_sessions_of),
                      model_name)
    return next((spec.name for spec in specs if model_name in spec.carries_for), None)


def _carrier(name: str | None, model):
    """The carrier model PropagationOptions.carrier names ("auto": ``carrier_for``), loaded once per process and
    checked to share ``model``'s image encoder; None when there is none."""
    if name == "auto":
        name = carrier_for(model.spec.name)
    if not name:
        return None
    carrier = _load_carrier(name, str(model.device))
    if _encoder_id(carrier) != _encoder_id(model):
        raise PromptError(f"The carrier {name!r} has another image encoder than {model.spec.name!r}, so it cannot "
                          "answer from the same embeddings: give a decoder trained over the same base model, or "
                          "carrier=None.")
    return carrier


@functools.lru_cache(maxsize=2)
def _load_carrier(name: str, device: str):
    from .models import load_model

    return load_model(name, device=device)


def _encoder_id(model) -> str:
    try:
        return encoder_id(model)
    except AttributeError:   # not a SAM-family model: nothing to share with
        return f"{type(model).__name__}:{id(model)}"


def _slice_count(value) -> int:
    try:
        whole = not isinstance(value, bool) and float(value).is_integer() and value >= 0
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise PromptError(f"max_slices={value!r}: give a whole number of slices >= 0, or None for no limit.")
    return int(value)


def _reachable(stretch, forward: bool, backward: bool, options: PropagationOptions, n: int) -> int:
    """How many slices the fronts of a stretch between anchors may decode (each front counts the slices it may
    reach: direction, max_slices, span): the progress total."""
    below, above, first, last = stretch
    low, high = max(first, (options.span or (0, n - 1))[0]), min(last, (options.span or (0, n - 1))[1])
    reach = options.max_slices if options.max_slices is not None else n
    up = max(0, min(high, below + reach) - low + 1) if forward and below is not None else 0
    down = max(0, high - max(low, above - reach) + 1) if backward and above is not None else 0
    return up + down


def _as_seeds(seeds) -> list[Seed]:
    if isinstance(seeds, Seed):
        seeds = [seeds]
    if isinstance(seeds, dict):
        seeds = [replace(s, index=i) if isinstance(s, Seed) else Seed(i, **s) for i, s in seeds.items()]
    out = []
    for seed in seeds or []:
        if not isinstance(seed, Seed):
            raise PromptError(f"Seeds must be sonosam.volume.Seed objects; got {type(seed).__name__}.")
        if seed.box is None and not seed.points and seed.mask is None:
            raise PromptError(f"Seed on slice {seed.index} has no box, points or mask.")
        out.append(seed)
    indices = [s.index for s in out]
    if len(set(indices)) != len(indices):
        raise PromptError(f"Two seeds on the same slice: {sorted(indices)}.")
    return out


# ---------------------------------------------------------------------------------------------- the engine

class _Run:
    def __init__(self, predictor: Predictor, volume: np.ndarray, axis: int, options: PropagationOptions,
                 volume_id: str | None, progress, cancel):
        self.predictor, self.volume, self.axis, self.options = predictor, volume, axis, options
        self.model = predictor.model
        kinds = self.model.spec.prompt_kinds
        self.use_mask = ("mask" in kinds) if options.mask_prompt is None else bool(options.mask_prompt)
        self.window = tuple(options.window) if options.window is not None else volume_window(volume)
        self.volume_id = volume_id or volume_cache_id(volume)
        self.progress, self.cancel = progress, cancel
        self.n = volume.shape[axis]
        self.slab = getattr(self.model, "slab_depth", 1)   # > 1: Med-SA SD-Trans encodes a slab at a time
        self.jobs: dict[int, object] = {}
        self.cancelled = False
        self.decoded = 0
        self.done = 0
        self.total = 0
        self.seed_checks: dict = {}
        self.prefer: str | None = None  # the kind of alternative taken on earlier seeds (a re-run's corrections)
        self.anchor_scores: dict[int, float] = {}  # anchor slice -> its predicted IoU (nan: an accepted mask)
        self.carrier = _carrier(options.carrier, self.model)
        self.carried = False  # the carrier answered at least one slice

    # embeddings ------------------------------------------------------------------------------
    def key(self, index: int):
        return (self.volume_id, self.axis, index)

    def image(self, index: int) -> np.ndarray:
        image = slice_of(self.volume, self.axis, index)
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            bad = int((~np.isfinite(image)).sum())
            raise InputImageError(f"Slice {index} along the propagation axis has {bad} NaN/Inf voxels: replace them "
                                  "(e.g. with 0, or np.nan_to_num) and propagate again.")
        return image

    def encode_slab(self, index: int) -> None:
        """For SD-Trans: encode the fixed slab [D*(k//D), D*(k//D) + D) holding slice k in one batch, as the
        adapters were trained and as `segment_volume_with_adapters` does, so a slice's embedding never
        depends on the order in which the fronts reach it."""
        if self.slab > 1 and not self.predictor.is_cached(self.key(index), self.window):
            first = index // self.slab * self.slab
            self.predictor.embed_together([(self.key(i), lambda i=i: self.image(i))
                                           for i in range(first, min(first + self.slab, self.n))], self.window)

    def prefetch(self, indices: Iterable[int]) -> None:
        if self.slab > 1:
            return  # a one-slice background encoding would lack its slab's context
        todo = [i for i in indices if 0 <= i < self.n and i not in self.jobs
                and not self.predictor.is_cached(self.key(i), self.window)]
        for i in todo:  # one job per slice, so that the ones a stopped front no longer needs can be cancelled
            self.jobs[i] = self.predictor.prefetch([(self.key(i), lambda i=i: self.image(i))], window=self.window)

    def drop_prefetch(self, keep: Callable[[int], bool] = lambda i: False) -> None:
        for i, job in list(self.jobs.items()):
            if not keep(i):
                job.cancel()
                del self.jobs[i]

    def predict(self, index: int, prompts: Prompts, model=None):
        """The predictor's answer on slice ``index``, or ``model``'s (a carrier: same encoder) from the same embedding."""
        self.decoded += 1
        self.encode_slab(index)
        if model is None:
            return self.predictor.predict(lambda: self.image(index), prompts, key=self.key(index), window=self.window,
                                          multimask=False)
        embedding = self.predictor.embedding(lambda: self.image(index), key=self.key(index), window=self.window)
        return model.decode(replace(embedding, model_id=model.model_id), prompts, multimask=False)

    def feature(self, index: int, mask: np.ndarray) -> np.ndarray:
        """Unit-length mean of the image embedding under `mask` (masked average pooling on the 64x64 grid)."""
        import torch
        import torch.nn.functional as F

        self.encode_slab(index)
        embedding = self.predictor.embedding(lambda: self.image(index), key=self.key(index), window=self.window)
        features = embedding.features[0].float().cpu()
        grid = features.shape[-1]
        size = self.model.spec.image_size
        h, w = (max(1, round(s * grid / size)) for s in embedding.input_size)
        weight = F.interpolate(torch.as_tensor(mask, dtype=torch.float32)[None, None], (h, w), mode="area")
        weight = F.pad(weight, (0, grid - w, 0, grid - h))[0, 0]
        vector = (features * weight).sum((1, 2)) / weight.sum().clamp(min=1e-6)
        return (vector / vector.norm().clamp(min=1e-6)).numpy()

    def points(self, carrier=None) -> bool:
        """Whether a propagated slice's prompt holds interior points: for ``carrier`` (None: the predictor's model)."""
        kinds = (carrier or self.model).spec.prompt_kinds
        return self.options.n_points > 0 and "point" in kinds and (carrier is not None or self.options.model_points)

    # steps -----------------------------------------------------------------------------------
    def report(self, info: SliceInfo) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done), info)

    def check_cancel(self) -> bool:
        if not self.cancelled and _is_cancelled(self.cancel):
            self.cancelled = True
        return self.cancelled

    def segment_seed(self, seed: Seed):
        if seed.mask is not None:
            mask = np.asarray(seed.mask, bool)
            if mask.shape != self.image(seed.index).shape:
                raise PromptError(f"The mask for slice {seed.index} has shape {mask.shape}; the slice is "
                                  f"{self.image(seed.index).shape}.")
            info = SliceInfo(seed.index, ACCEPTED, float("nan"), int(mask.sum()), source=seed.index)
            return mask, info
        if self.options.seed_check and (seed.box is not None or seed.points):   # clicks alone: offered, kept
            self.decoded += 1
            self.encode_slab(seed.index)
            check = check_seed_slice(self.predictor, self.image(seed.index), seed, self.options, window=self.window,
                                     key=self.key(seed.index), prefer=self.prefer)
            self.seed_checks[seed.index] = check
            chosen = check.candidates[check.best]
            mask, score = chosen.mask, chosen.score
            reason = "" if check.ok else check.summary()  # names the alternative taken, and why
            kind = "model" if np.isfinite(score) else "intensity"
        else:
            pred = self.predict(seed.index, Prompts(seed.points, seed.labels, seed.box))
            mask, score, reason, kind = pred.mask, pred.score, "", "model"
        info = SliceInfo(seed.index, SEED, score, int(mask.sum()), reason=reason, source=seed.index, candidate=kind)
        if info.area == 0:
            info.reason = "the seed prompt gave an empty mask"
        return mask, info

    def front(self, start: int, mask: np.ndarray, step: int, limit: int, out: dict,
              agrees: Callable[[int, np.ndarray], bool] | None = None,
              yields: Callable[[int], bool] | None = None) -> int | None:
        """Propagate from anchor `start` (its mask) in direction `step` up to slice `limit` (inclusive);
        put (mask, info) per slice in `out`. A local re-run (sonosam.volume's `local_rerun`) also gives
        `agrees(t, mask)`: True ends the front at slice t, which then keeps the previous run's result (returned:
        t); and `yields(t)`: True ends it before slice t (another anchor's earlier result is nearer there)."""
        opt = self.options
        if not mask.any():  # an empty anchor (e.g. a corrected slice erased by the user) has no front
            return None
        anchor_area, anchor_box = int(mask.sum()), bounding_box(mask)
        prev_mask, prev_image = mask, self.image(start).astype(np.float32)
        anchor_values = prev_image[mask]
        anchor_mean, anchor_std = float(anchor_values.mean()), max(float(anchor_values.std()), 1e-6)
        anchor_feature = self.feature(start, mask) if opt.min_similarity is not None else None
        polarity = contrast_polarity(prev_image, mask, opt.min_contrast)
        scored = polarity is None or contrast_polarity(prev_image, mask, opt.unscored_contrast) is None
        # the anchor's own split of its kind from its surroundings (Otsu over it and a 3 px ring), for the slices where
        # the box's Otsu split does not fall between the two (around the skull's bone the box holds air, tissue and
        # bone: its split is 338 HU on the seed slice, -400 HU from 4 slices up, where "bright" is the whole head)
        split = between = None
        if polarity is not None:
            around = ndimage.binary_dilation(mask, iterations=3) & ~mask
            split, between = _otsu(prev_image[mask | around]), (float(prev_image[around].mean()), anchor_mean)
            if opt.shift_contrast_floor is not None:
                anchor_std = max(anchor_std, opt.shift_contrast_floor * abs(anchor_mean - between[0]))
        if opt.max_slices is not None:
            limit = start + step * min(abs(limit - start), opt.max_slices)
        if opt.span is not None:  # the user's ends bound the front (an earlier anchor outside them has none)
            if not opt.span[0] <= start <= opt.span[1]:
                return None
            limit = min(limit, opt.span[1]) if step > 0 else max(limit, opt.span[0])
        weak: list[tuple[np.ndarray, SliceInfo]] = []  # weak slices in a row: kept on probation
        areas = [anchor_area]  # the front's areas so far: its own trend, for the growth rule

        def keep(items):
            for item in items:
                out[item[1].index] = item
                self.report(item[1])

        def stop(info, reason, at_once):
            """End the front before the weak run: its first slice is reported as the stop, the rest dropped."""
            first = weak[0][1] if weak else info
            if weak:
                reason = f"{first.reason}, then {reason}" if at_once else \
                    f"{first.reason} ({len(weak) + 1} weak slices in a row)"
            keep([(None, replace(first, status=STOPPED, reason=reason))])

        def judge(new, box, score):
            """(why this slice is weak or ends the front, "" if neither; whether that alone ends it)."""
            area = int(new.sum())
            shift = similarity = extent = None
            if area:
                shift = (float(image[new].mean()) - anchor_mean) / anchor_std
                if anchor_feature is not None:
                    similarity = float(self.feature(t, new) @ anchor_feature)
                if anchor_box is not None:
                    nb = bounding_box(new)
                    extent = max((nb[2] - nb[0] + 1) / (anchor_box[2] - anchor_box[0] + 1),
                                 (nb[3] - nb[1] + 1) / (anchor_box[3] - anchor_box[1] + 1))
            ratios = [b / max(a, 1) for a, b in zip(areas[-4:], areas[-3:])]
            trend = float(np.exp(np.mean(np.log(np.maximum(ratios, 1e-6))))) if len(ratios) >= 2 else None
            return stop_reason(opt, share=share, area=area, prev_area=int(prev_mask.sum()), anchor_area=anchor_area,
                               score=score if scored else float("nan"),
                               overlap=(new & prev_mask).sum() / max(area, 1), intensity_shift=shift,
                               similarity=similarity, trend=trend, extent_ratio=extent,
                               fills_box=bool(area) and _fills_box(new, box),
                               anchor_score=self.anchor_scores.get(start, float("nan")))

        flow = FlowEstimator(scale=1.0) if opt.follow_motion else None
        t = start
        while t != limit:
            if self.check_cancel():
                return None
            t += step
            if yields is not None and yields(t):
                keep([(m, replace(i, reason="", flag=i.reason)) for m, i in weak])
                return None
            self.prefetch(range(t, t + step * (opt.lookahead + 1), step))
            image = self.image(t).astype(np.float32)
            if image.min() == image.max():
                stop(SliceInfo(t, STOPPED, float("nan"), 0, source=start), "the slice is blank", True)
                return None
            if flow is not None:
                prev_image, prev_mask = follow_slice(flow, prev_image, image, prev_mask)
            model = self.carrier if polarity is None else None
            self.carried = self.carried or model is not None
            kinds = (model or self.model).spec.prompt_kinds
            prompts, share = next_slice_prompt(prev_image, image, prev_mask, anchor_box, opt,
                                               self.points(model),
                                               "mask" in kinds if model is not None else self.use_mask)
            box = tuple(prompts.box)
            pred = self.predict(t, prompts, model)
            new, score, kind = pred.mask, pred.score, "model"
            if opt.keep_component and new.any():
                new = keep_touching(new, prev_mask)
            if polarity is not None:  # a high-contrast structure: the intensity candidate may follow it better
                found = structure_candidate(image, box, polarity=polarity, near=prev_mask, threshold=split,
                                            between=between)
                if found is not None:
                    other = keep_touching(found[0], prev_mask)
                    if _iou(other, prev_mask) > _iou(new, prev_mask):
                        new, score, kind = other, float("nan"), "intensity"
            reason, at_once = judge(new, box, score)
            if reason and model is not None and opt.second_opinion:
                # the carrier is unsure here: the predictor's own model answers afresh (no mask carried) and is
                # kept when no rule finds fault with it (a front's end, or a slice the carrier lost the thread on)
                fresh, _ = next_slice_prompt(prev_image, image, prev_mask, anchor_box, opt,
                                             self.points(),
                                             self.use_mask)
                second = self.predict(t, fresh)
                other = keep_touching(second.mask, prev_mask) if opt.keep_component and second.mask.any() \
                    else second.mask
                if not judge(other, tuple(fresh.box), second.score)[0]:
                    new, score, kind, reason, at_once = other, second.score, "second opinion", "", False
            area = int(new.sum())
            info = SliceInfo(t, PROPAGATED, score, area, source=start, candidate=kind)
            if reason and (at_once or len(weak) + 1 >= max(opt.patience, 1)):
                stop(info, reason, at_once)
                return None
            if not reason and agrees is not None and agrees(t, new):  # back on the previous run's track
                keep([(m, replace(i, reason="", flag=i.reason)) for m, i in weak])
                return t
            if reason:
                weak.append((new, replace(info, reason=reason)))
            else:  # a good slice: the weak ones before it stay, flagged
                keep([(m, replace(i, reason="", flag=i.reason)) for m, i in weak] + [(new, info)])
                weak = []
            prev_mask, prev_image = new, image
            areas.append(area)
        keep([(m, replace(i, reason="", flag=i.reason)) for m, i in weak])  # the range ended before a stop
        return None


def _yields(index: int, anchor: int, previous_source, outdated) -> bool:
    """A local re-run's front from new `anchor` leaves slice `index` to the previous run when that result still
    holds and its own anchor is nearer (the nearer anchor's result wins, as between two fronts)."""
    source = previous_source(index)
    return source is not None and not outdated(index) and abs(index - source) < abs(index - anchor)


def check_seed_slice(predictor, image: np.ndarray, seed: Seed, options: PropagationOptions, *, window, key=None,
                     prefer: str | None = None):
    """The seed check a propagation runs on a prompted seed slice (sonosam.seed_check.check_seed with the options'
    switches): one call for the run and for a caller that lets the user pick among its masks (`sonosam propagate
    --seed-choice`), so that both number the masks alike."""
    return check_seed(predictor, image, box=seed.box, points=seed.points, labels=seed.labels, key=key, window=window,
                      prefer=prefer, contrast_switch=options.seed_contrast_switch,
                      three_classes=options.seed_three_classes)


def check_span(span, n: int, seeds: Sequence[Seed]) -> tuple[int, int]:
    """The user's span as (first, last) ints, checked: within 0..n-1, first <= last, every seed that holds
    something inside it (PromptError naming the problem otherwise)."""
    try:
        first, last = (int(v) for v in span)
        ok = all(float(v) == int(v) for v in span)
    except (TypeError, ValueError):
        ok = False
    if not ok or not 0 <= first <= last < n:
        raise PromptError(f"span must be two slice indices, first <= last, within 0..{n - 1}; got {span!r}.")
    outside = [seed.index for seed in seeds if not first <= seed.index <= last and not seed.empty]
    if outside:
        raise PromptError(f"Seed slice {outside[0]} lies outside the span {first}..{last}: widen the span or seed "
                          "inside it.")
    return first, last


def _mask_shape(volume_shape, axis):
    return tuple(s for a, s in enumerate(volume_shape) if a != axis)


def propagate(predictor, volume, seeds, axis=0, options: PropagationOptions | None = None, *,
              previous: PropagationResult | None = None, volume_id: str | None = None,
              progress: Callable[[int, int, SliceInfo], None] | None = None, cancel=None,
              **option_overrides) -> PropagationResult:
    """Segment a structure through `volume` ([k, j, i] array, or a sonosam.io.Volume) from seed slices.

    predictor: a sonosam Predictor (its embedding cache is reused across runs) or a model.
    seeds: Seed objects (or {index: {"box": ...}}); may be empty on a re-run that only accepts slices.
    axis: 0/1/2 or "k"/"j"/"i". options / keyword overrides: see PropagationOptions.
    previous: the result of an earlier run on the same volume and axis: its seeds and accepted slices stay
    anchors, and only the stretches next to new or changed anchors are recomputed.
    volume_id: names the volume in the embedding cache (default: a hash of its voxels).
    progress(done, total, SliceInfo) after each slice; cancel: threading.Event or callable -> bool."""
    started = time.perf_counter()
    predictor = _as_predictor(predictor)
    volume = np.asarray(getattr(volume, "array", volume))
    if volume.ndim != 3:
        raise InputImageError(f"A volume must be 3D [k, j, i]; got shape {volume.shape}.")
    axis = axis_index(axis)
    options = replace(options or PropagationOptions(), **option_overrides)
    if options.direction not in ("both", "forward", "backward"):
        raise PromptError(f"direction must be both, forward or backward; got {options.direction!r}.")
    seeds = _as_seeds(seeds)
    n = volume.shape[axis]
    for seed in seeds:
        if not 0 <= seed.index < n:
            raise PromptError(f"Seed slice {seed.index} is outside the volume ({n} slices along axis {axis}).")
    if options.span is not None:
        options = replace(options, span=check_span(options.span, n, seeds))
    if options.max_slices is not None:
        options = replace(options, max_slices=_slice_count(options.max_slices))
    if previous is not None:
        if previous.axis != axis or previous.mask.shape != volume.shape:
            raise PromptError("`previous` is a result for another volume shape or axis; run without it.")
    elif not seeds:
        raise PromptError("Give at least one seed slice (a box, points or a mask).")

    run = _Run(predictor, volume, axis, options, volume_id, progress, cancel)
    if previous is not None and previous.volume_id not in (None, run.volume_id):
        raise PromptError("`previous` is a result for another volume (or this one changed since); run without it.")
    encoder_calls = predictor.encoder_calls

    # anchors: earlier ones (kept as they are) and this run's seeds (new: their neighbourhood is recomputed)
    anchors: dict[int, Seed] = dict(previous.anchors) if previous else {}
    new_indices = {seed.index for seed in seeds}
    run.prefetch(sorted(new_indices))
    result = PropagationResult(np.zeros(volume.shape, bool), axis, volume_id=run.volume_id)
    if previous is not None:
        result.mask[...] = previous.mask
        result.slices = {i: replace(s) for i, s in previous.slices.items()}

    def put(index, mask, info):
        index_slice = [slice(None)] * 3
        index_slice[axis] = index
        result.mask[tuple(index_slice)] = mask if mask is not None else False
        result.slices[index] = info

    if previous is not None:  # corrections follow the kind of alternative the earlier seeds took
        taken = [c.polarity for c in previous.seed_checks.values() if c.best and c.polarity]
        run.prefer = taken[0] if taken else None
    order = sorted(set(anchors) | new_indices)
    # stretches: (anchor below or None, anchor above or None, first, last slice)
    stretches = [(None, order[0], 0, order[0] - 1)]
    stretches += [(a, b, a + 1, b - 1) for a, b in zip(order, order[1:])]
    stretches += [(order[-1], None, order[-1] + 1, n - 1)]
    todo = [s for s in stretches if s[2] <= s[3] and ({s[0], s[1]} & new_indices or previous is None)]
    forward, backward = options.direction in ("both", "forward"), options.direction in ("both", "backward")
    run.total = len(seeds) + sum(_reachable(s, forward, backward, options, n) for s in todo)

    anchor_masks: dict[int, np.ndarray] = {}
    for seed in seeds:
        mask, info = run.segment_seed(seed)
        anchors[seed.index] = seed
        anchor_masks[seed.index] = mask
        put(seed.index, mask, info)
        run.report(info)
    for index in anchors:
        if index not in anchor_masks:
            anchor_masks[index] = result.slice_mask(index).copy()
    run.anchor_scores = {i: (result.slices[i].score if i in result.slices else float("nan")) for i in anchors}

    local = previous is not None and options.local_rerun

    def previous_source(index):
        """The anchor that the previous run's mask on this slice came from (None: no mask there)."""
        info = previous.slices.get(index)
        if info is None or info.status == STOPPED or info.source is None or not previous.slice_mask(index).any():
            return None
        return info.source

    def outdated(index) -> bool:
        """The previous run's mask here came from a front that passed through a new anchor (or from an anchor
        the user replaced): it no longer holds."""
        source = previous_source(index)
        return source is not None and any(min(source, index) < a < max(source, index) or a == source != index
                                          for a in new_indices)

    def agrees(index, mask) -> bool:
        old = previous.slice_mask(index)
        return bool(old.any()) and _iou(mask, old) >= options.agree_iou

    for below, above, first, last in todo:
        if run.check_cancel():
            break
        results_up: dict = {}
        results_down: dict = {}
        agreed_up = agreed_down = None
        if local:  # only the new anchors' fronts run, each until it meets the previous run's result again
            if below is not None and forward and below in new_indices:
                agreed_up = run.front(below, anchor_masks[below], +1, last, results_up, agrees,
                                      lambda t: _yields(t, below, previous_source, outdated))
            run.drop_prefetch()
            if above is not None and backward and above in new_indices and not run.check_cancel():
                agreed_down = run.front(above, anchor_masks[above], -1, first, results_down,
                                        agrees, lambda t: _yields(t, above, previous_source, outdated))
            run.drop_prefetch()
        else:
            if below is not None and forward:
                run.front(below, anchor_masks[below], +1, last, results_up)
            run.drop_prefetch()
            if above is not None and backward and not run.check_cancel():
                run.front(above, anchor_masks[above], -1, first, results_down)
            run.drop_prefetch()
        for index in range(first, last + 1):
            up, down = results_up.get(index), results_down.get(index)
            if local and not up and not down:
                # no new result: keep the previous one unless it came through a new anchor and no front met it
                # again before this slice (a front that met the previous run vouches for what lies beyond)
                met = (agreed_up is not None and index >= agreed_up) or \
                    (agreed_down is not None and index <= agreed_down)
                if outdated(index) and not met:
                    put(index, None, None)
                    result.slices.pop(index, None)
                elif outdated(index):  # it now rests on the anchor whose front met it
                    result.slices[index].source = below if agreed_up is not None and index >= agreed_up else above
                continue
            choice = None
            if up and down:  # both fronts reached it: the nearer anchor's result (a stop beats nothing)
                choice = up if (index - below) <= (above - index) else down
                if choice[0] is None and (up[0] is not None or down[0] is not None):
                    choice = up if up[0] is not None else down
            else:
                choice = up or down
            if choice is not None:
                put(index, choice[0], choice[1])
            elif index in result.slices or (previous is not None and result.slice_mask(index).any()):
                put(index, None, None)
                result.slices.pop(index, None)
    run.drop_prefetch()

    result.anchors = anchors
    result.seed_checks = dict(previous.seed_checks) if previous is not None else {}
    result.seed_checks.update(run.seed_checks)
    result.cancelled = run.cancelled
    result.decoded = run.decoded
    result.encoder_calls = predictor.encoder_calls - encoder_calls
    result.carrier = (run.carrier.spec.name if run.carried else None) or (previous.carrier if previous else None)
    if previous is not None:
        for i in sorted(set(range(n)) - new_indices):   # what the user should review: changed or newly filled
            before, after = previous.slice_mask(i), result.slice_mask(i)
            if before.any():
                if _iou(after, before) < options.agree_iou:
                    result.replaced.append(i)
            elif after.any():
                result.added.append(i)
    result.seconds = time.perf_counter() - started
    return result


def naive_baseline(predictor, volume, box, axis=0, indices: Iterable[int] | None = None,
                   window: tuple[float, float] | None = None, volume_id: str | None = None) -> np.ndarray:
    """Every slice (or `indices`) prompted independently with the same box: the baseline propagation must beat."""
    predictor = _as_predictor(predictor)
    volume = np.asarray(getattr(volume, "array", volume))
    axis = axis_index(axis)
    window = tuple(window) if window is not None else volume_window(volume)
    volume_id = volume_id or volume_cache_id(volume)
    out = np.zeros(volume.shape, bool)
    for index in (range(volume.shape[axis]) if indices is None else indices):
        image = slice_of(volume, axis, index)
        if image.min() == image.max():  # nothing to segment (e.g. an empty border slice)
            continue
        pred = predictor.predict(image, Prompts(box=box), key=(volume_id, axis, index), window=window, multimask=False)
        where = [slice(None)] * 3
        where[axis] = index
        out[tuple(where)] = pred.mask
    return out
