"""The evaluation loop: simulated interactive segmentation of every sample with any predictor.

A predictor is any object with ``predict(image, prompts, multimask=, key=)`` (``prompts`` a
``sonosam.prompts.Prompts``)
returning a prediction with ``masks`` (N, H, W) sorted best first and ``low_res_logits`` (N, 256, 256)
(``sonosam.predictor.Predictor``, see docs/CORE_API.md). A bare model (``encode``/``decode``) is wrapped
in a Predictor.

Protocol per sample (interaction 1 = the first prompt):

1. a positive click at the ground-truth centroid (``start="point"``) or the ground-truth box with optional
   jitter (``start="box"``); ``start="auto"`` picks the point when the model takes clicks, else the box;
   a single first click asks for 3 masks (``multimask``) and keeps the one with the best predicted IoU;
2. interactions 2..N: one click in the largest error region of the current mask (see ``clicks``), all
   previous prompts kept, the previous best low-res logits passed as the mask prompt (if the model takes
   masks), one mask asked; when the mask is already perfect, the Dice is carried forward. With
   ``local_corrections`` the model's new answer is kept only where it changed the clicked pixel and within 3
   x the click's depth of it, a positive click it ignored adds what the model segments from that click alone, a
   click still not reached changes the disk of its depth around it, nothing is added outside the box and
   nothing changes nearer an earlier click of the other kind (``sonosam.masks.local_correction``, what the Slicer
   effect does); else the whole new answer (SAM's protocol).

With ``pick_first`` the simulated user also looks at the Slicer effect's **Mask** list after the first prompt (the
seed check's alternatives, ``sonosam.seed_check.check_seed``: for a box its darker or brighter part and more, for a
click the region it is in) and takes the listed mask closest to the reference where it beats the model's answer
(``ImageResult.picked`` names it); the corrections then start from it, corrected as a taken alternative
(``local_correction(alternative=True)``, as the Slicer effect corrects it). A diligent user who picks by the
reference: an upper bound on a pick by eye. With ``pick_first="suggested"`` the simulated user takes what the check
suggests for a box's first answer (``check.best``, the model's answer unless it is clearly wrong) without looking at
the reference.

A model that takes no clicks (``spec.prompt_kinds`` lacks ``"point"``, e.g. LiteMedSAM) is run with the
box only; its later interactions are recorded as NaN ("not measured") and the result says
``clicks_supported=False``. A sample whose prediction raises is recorded with its error message and NaN
Dice, never as a zero, and is left out of the means; the summary counts such errors.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputImageError, PromptError, SonoSAMError, UnsupportedPromptError
from ..masks import local_correction
from ..prompts import Prompts
from . import metrics
from .clicks import ClickSimulator
from .datasets import Sample

__all__ = ["ImageResult", "ModelResult", "evaluate", "evaluate_models", "prompt_kinds", "as_predictor"]


@dataclass
class ImageResult:
    """The interactive run on one sample."""

    model: str
    name: str
    label: int
    area: int
    start: str
    dice: list[float]                       # after each interaction 1..N (NaN: not measured)
    clicks: list[tuple[int, int, int]] = field(default_factory=list)   # (x, y, label) in order
    box: tuple[int, int, int, int] | None = None
    scores: list[float] = field(default_factory=list)                  # predicted IoU per interaction
    seconds: float = 0.0
    error: str | None = None
    refused: str | None = None              # the model refused corrective clicks (undeclared box-only)
    source: str = ""                        # the file (volume, loop, image) the sample was cut from
    picked: str = ""                        # pick_first: the listed mask taken after the first prompt ("" none)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ModelResult:
    """All samples for one model, with the protocol's settings."""

    model: str
    start: str
    n_clicks: int
    images: list[ImageResult]
    clicks_supported: bool = True
    seconds: float = 0.0
    encoder_calls: int | None = None
    box_jitter: float = 0.0
    local_corrections: bool = False
    pick_first: bool | str = False
    box_margin: int = 0
    mask_prompts: bool = True               # the previous mask logits were fed back (the model takes mask prompts)

    @property
    def curves(self) -> list[list[float]]:
        return [r.dice for r in self.images if r.ok]

    @property
    def errors(self) -> list[ImageResult]:
        return [r for r in self.images if not r.ok]

    @property
    def images_per_second(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else float("nan")

    def summary(self, thresholds: Sequence[float] = (0.8, 0.9)) -> dict:
        """``metrics.summarize_curves`` over the successful samples, plus ``errors`` and timing."""
        out = metrics.summarize_curves(self.curves, thresholds, self.n_clicks)
        out.update(model=self.model, start=self.start, errors=len(self.errors), n_clicks=self.n_clicks,
                   clicks_supported=self.clicks_supported, seconds=self.seconds,
                   seconds_per_image=self.seconds / len(self.images) if self.images else float("nan"),
                   encoder_calls=self.encoder_calls, local_corrections=self.local_corrections,
                   pick_first=self.pick_first, picked=sum(bool(r.picked) for r in self.images if r.ok),
                   box_jitter=self.box_jitter, box_margin=self.box_margin, mask_prompts=self.mask_prompts)
        return out


def prompt_kinds(predictor) -> set[str] | None:
    """The prompt kinds a predictor (or its model) declares in ``spec.prompt_kinds``; None if unknown."""
    for holder in (predictor, getattr(predictor, "model", None)):
        spec = getattr(holder, "spec", None)
        kinds = getattr(spec, "prompt_kinds", None)
        if kinds is not None:
            return set(kinds)
    return None


def model_name(predictor) -> str:
    for holder in (predictor, getattr(predictor, "model", None)):
        name = getattr(getattr(holder, "spec", None), "name", None)
        if name:
            return str(name)
    return type(predictor).__name__


def as_predictor(model):
    """``model`` itself when it has ``predict``; a bare model (encode/decode) wrapped in a Predictor."""
    if hasattr(model, "predict"):
        return model
    if hasattr(model, "encode") and hasattr(model, "decode"):
        from ..predictor import Predictor

        return Predictor(model)
    raise TypeError(f"{type(model).__name__} has neither predict() nor encode()/decode(); cannot evaluate it.")


def _best(pred, shape) -> tuple[np.ndarray, np.ndarray | None, float]:
    masks = np.asarray(pred.masks)
    if masks.ndim == 2:
        masks = masks[None]
    mask = masks[0].astype(bool, copy=False)
    if mask.shape != tuple(shape):
        raise SonoSAMError(f"The model returned a {mask.shape} mask for a {tuple(shape)} image.")
    logits = getattr(pred, "low_res_logits", None)
    logits = None if logits is None else np.asarray(logits)[0]
    scores = getattr(pred, "scores", None)
    score = float(np.asarray(scores).ravel()[0]) if scores is not None and np.size(scores) else float("nan")
    return mask, logits, score


def _resolve_start(start: str, kinds: set[str] | None, name: str) -> str:
    if start not in ("auto", "point", "box"):
        raise PromptError(f"start must be 'auto', 'point' or 'box', not {start!r}")
    takes_points = kinds is None or "point" in kinds
    if start == "auto":
        return "point" if takes_points else "box"
    if start == "point" and not takes_points:
        raise UnsupportedPromptError(
            f"Model {name!r} takes no clicks (its prompt kinds: {', '.join(sorted(kinds))}); "
            "evaluate it with a box start (start='box', CLI --start box) or use a click-trained model.")
    if start == "box" and kinds is not None and "box" not in kinds:
        raise UnsupportedPromptError(f"Model {name!r} takes no boxes (its prompt kinds: "
                                     f"{', '.join(sorted(kinds))}); use start='point'.")
    return start


def check_starts(model_name: str, starts: Sequence[str]) -> None:
    """A model name that is not registered, or a start it cannot take, refused before any data or weights are read
    (a checkpoint may declare other prompt kinds: check those when it is loaded)."""
    from ..models import get_spec

    kinds = set(get_spec(model_name).prompt_kinds)
    for start in starts:
        _resolve_start(start, kinds, model_name)


def source_of(sample: Sample) -> str:
    """The file a sample was cut from (its key's first part: slices of one volume share it)."""
    return str(sample.key[0]) if sample.key else sample.name


def check_keys(samples: Sequence[Sample]) -> None:
    """Samples that share a cache key must show the same pixels: the Predictor trusts keys, so a second image under
    a first one's key would be decoded on the first one's embedding."""
    first: dict = {}
    for sample in samples:
        if not sample.key:   # None: keyed by content (the Predictor's own rule)
            continue
        try:
            seen = first.setdefault(sample.key, sample)
        except TypeError:   # an unhashable key: the Predictor names it
            continue
        if seen is not sample and seen.image is not sample.image and not np.array_equal(seen.image, sample.image):
            raise InputImageError(
                f"Samples {seen.name!r} and {sample.name!r} share the key {sample.key!r} but their images differ; "
                "give each image its own name (samples_from_arrays(..., name=...)) or its own Sample.key.")


def run_sample(predictor, sample: Sample, *, n_clicks: int = 10, start: str = "point",
               clicks_supported: bool = True, masks_supported: bool = True, box_jitter: float = 0.0,
               box_margin: int = 0, rng: np.random.Generator | None = None, multimask_first: bool = True,
               name: str = "model", local_corrections: bool = False, pick_first: bool | str = False) -> ImageResult:
    """The interactive protocol on one sample (exceptions propagate; ``evaluate`` records them)."""
    gt = np.asarray(sample.mask, dtype=bool)
    sim = ClickSimulator(rng=rng if rng is not None else np.random.default_rng(0), box_jitter=box_jitter,
                         box_margin=box_margin)
    result = ImageResult(name, sample.name, sample.label, sample.area, start, [float("nan")] * n_clicks,
                         source=source_of(sample))
    began = time.perf_counter()
    prompts = sim.start(gt, start)
    result.box = None if prompts.box is None else tuple(int(v) for v in prompts.box)
    result.clicks = [(int(x), int(y), int(l)) for (x, y), l in zip(prompts.points, prompts.labels)]
    multimask = bool(multimask_first and start == "point")
    # the sample's window (one per volume), where it has one; predictors without windows are never asked
    shown = {"window": sample.window} if sample.window is not None else {}
    pred = predictor.predict(sample.image, prompts, multimask=multimask, key=sample.key, **shown)
    mask, logits, score = _best(pred, gt.shape)
    if pick_first:
        how = "suggested" if pick_first == "suggested" else "closest"
        mask, logits, result.picked = _pick_from_list(predictor, sample, prompts, mask, logits, gt, how)
    result.dice[0], result.scores = metrics.dice(mask, gt), [score]
    for step in range(1, n_clicks if clicks_supported else 1):
        click, with_click = sim.correct(mask, gt, prompts)
        if click is None:  # perfect already: nothing left to click on
            result.dice[step] = result.dice[step - 1]
            result.scores.append(result.scores[-1])
            continue
        result.clicks.append((click.x, click.y, click.label))
        prompts = with_click
        try:
            pred = predictor.predict(sample.image, prompts.with_mask(logits if masks_supported else None),
                                     multimask=False, key=sample.key, **shown)
        except UnsupportedPromptError as error:
            # a model that did not declare its prompt kinds refuses clicks: stop here, say so
            result.clicks.pop()
            result.refused = str(error)
            break
        answer, logits, score = _best(pred, gt.shape)
        if local_corrections:   # alone: the model's answer to this click by itself, if it ignored the click
            mask = local_correction(mask, answer, click.xy, positive=click.positive, alone=lambda: _best(
                predictor.predict(sample.image, Prompts([click.xy], [1]), multimask=False, key=sample.key, **shown),
                gt.shape)[0], box=prompts.box,
                earlier=[(xy, label == 1) for xy, label in zip(prompts.points[:-1], prompts.labels[:-1])],
                image=sample.image, window=sample.window, alternative=bool(result.picked))
        else:
            mask = answer
        result.dice[step] = metrics.dice(mask, gt)
        result.scores.append(score)
    result.seconds = time.perf_counter() - began
    return result


def _pick_from_list(predictor, sample: Sample, prompts: Prompts, mask, logits, gt, how="closest"):
    """The simulated user's pick from the seed check's list after the first prompt: (mask, logits, what was picked);
    the model's answer ("" picked) unless a listed mask is closer to the reference (``how="closest"``) or the check
    suggests another (``how="suggested"``)."""
    from ..seed_check import check_seed, preview_index

    shown = {"window": sample.window} if sample.window is not None else {}

    class Asks:   # the seed check asks with keywords; the harness's predictors take a Prompts
        model = getattr(predictor, "model", None) or predictor

        @staticmethod
        def predict(image, points=None, labels=None, box=None, multimask=False, key=None, window=None):
            return predictor.predict(image, Prompts(points, labels, box), multimask=multimask, key=key, **shown)

    check = check_seed(Asks, sample.image, box=prompts.box, points=prompts.points, labels=prompts.labels,
                       key=sample.key, window=sample.window)
    if how == "suggested":   # the preview the Slicer effect shows
        index = preview_index(check.best, prompts.box, prompts.points)
        best = check.candidates[index] if index else None
    else:
        best = max(check.candidates[1:], key=lambda c: metrics.dice(c.mask, gt), default=None)
        best = best if best is not None and metrics.dice(best.mask, gt) > metrics.dice(mask, gt) else None
    if best is None:
        return mask, logits, ""
    return np.asarray(best.mask, bool), best.logits, best.source.split(" (")[0]


def evaluate(predictor, samples: Sequence[Sample], *, n_clicks: int = 10, start: str = "auto",
             box_jitter: float = 0.0, box_margin: int = 0, seed: int = 0, name: str | None = None,
             progress: bool = True, on_error: str = "record", multimask_first: bool = True,
             local_corrections: bool = False, pick_first: bool | str = False) -> ModelResult:
    """Run the click protocol (module doc) on every sample; ``on_error="raise"`` stops at the first
    failing sample, ``"record"`` keeps its message in the result and goes on."""
    if not isinstance(n_clicks, (int, np.integer)) or n_clicks < 1:
        raise PromptError(f"The number of interactions must be a whole number >= 1, not {n_clicks!r}.")
    if on_error not in ("record", "raise"):
        raise ValueError("on_error must be 'record' or 'raise'")
    if pick_first not in (False, True, "closest", "suggested"):
        raise ValueError(f"pick_first must be False, True (the closest listed mask) or 'suggested', not "
                         f"{pick_first!r}")
    check_keys(samples)
    predictor = as_predictor(predictor)
    name = name or model_name(predictor)
    kinds = prompt_kinds(predictor)
    start = _resolve_start(start, kinds, name)
    clicks_supported = kinds is None or "point" in kinds
    masks_supported = kinds is None or "mask" in kinds
    if not clicks_supported and n_clicks > 1:
        warnings.warn(f"Model {name!r} takes no clicks (prompt kinds: {', '.join(sorted(kinds))}): only the "
                      f"box is evaluated; Dice after clicks 2..{n_clicks} is reported as not measured.",
                      stacklevel=2)
    calls_before = getattr(predictor, "encoder_calls", None)
    images: list[ImageResult] = []
    began = time.perf_counter()
    bar = _progress(samples, name, progress)
    try:
        for index, sample in enumerate(bar):
            rng = np.random.default_rng([seed, index])
            try:
                result = run_sample(predictor, sample, n_clicks=n_clicks, start=start,
                                    clicks_supported=clicks_supported, masks_supported=masks_supported,
                                    box_jitter=box_jitter, box_margin=box_margin, rng=rng,
                                    multimask_first=multimask_first, name=name,
                                    local_corrections=local_corrections, pick_first=pick_first)
            except Exception as error:  # noqa: BLE001 - recorded with its message, never as a zero
                if on_error == "raise":
                    raise
                result = ImageResult(name, sample.name, sample.label, sample.area, start,
                                     [float("nan")] * n_clicks, error=f"{type(error).__name__}: {error}",
                                     source=source_of(sample))
                warnings.warn(f"{name} on {sample.name}: {result.error}", stacklevel=2)
            if result.refused and clicks_supported:
                clicks_supported = False
                warnings.warn(f"Model {name!r} refused a click ({result.refused}); later samples are "
                              "evaluated with the first prompt only.", stacklevel=2)
            images.append(result)
            if progress and hasattr(bar, "set_postfix") and result.ok:
                bar.set_postfix(dice1=f"{result.dice[0]:.3f}", last=f"{np.nanmax(result.dice):.3f}")
    finally:
        if hasattr(bar, "close"):
            bar.close()
    seconds = time.perf_counter() - began
    calls_after = getattr(predictor, "encoder_calls", None)
    encoder_calls = calls_after - calls_before if isinstance(calls_after, int) and isinstance(calls_before, int) else None
    if images and all(not r.ok for r in images):
        raise SonoSAMError(f"Model {name!r} failed on every sample; first error: {images[0].error}")
    return ModelResult(name, start, n_clicks, images, clicks_supported, seconds, encoder_calls, box_jitter,
                       local_corrections, pick_first, box_margin=box_margin,
                       mask_prompts=masks_supported and clicks_supported)


def _progress(samples, name: str, enabled: bool):
    if not enabled:
        return samples
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a declared dependency; stay usable without it
        return samples
    return tqdm(samples, desc=f"evaluate {name}", unit="img", leave=True)


def evaluate_models(models: Mapping[str, object], samples: Sequence[Sample], **kwargs) -> list[ModelResult]:
    """``evaluate`` for each ``name -> predictor`` on the same samples (same clicks for the same masks)."""
    return [evaluate(predictor, samples, name=name, **kwargs) for name, predictor in models.items()]
