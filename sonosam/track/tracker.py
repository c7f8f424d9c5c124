"""Track structures through a cine loop with a SAM-family model and an optical-flow motion prior.

    tracker = Tracker(Predictor(load_model()), cine.frames, threshold=0.85, model_every=5)
    tracker.add_object("LV", frame=0, box=(300, 70, 440, 270))
    report = tracker.run()                    # stops on the first frame that needs attention
    while report.paused:
        event = report.events[0]              # Intervention(frame, object, reason, confidence)
        tracker.correct(event.frame, event.object, box=...)   # or mask=..., or tracker.accept(...)
        report = tracker.run()                # resumes; corrected frames are keyframes, never overwritten
    masks = tracker.masks("LV")               # (T, H, W) bool

Per frame and object: the previous frame's mask is warped by dense optical flow (the motion prior,
``motion.py``). On *model frames* — keyframe-anchored every ``model_every`` frames, plus any frame whose
motion evidence is weak or whose flow-carried mask is losing its shape — the model is prompted with a
fresh box around the prior (10 % margin; no mask logits, so its mask is an independent opinion, and an
interior point when the model takes clicks). ``fusion`` decides which mask is kept: "auto" (default) keeps
the flow-carried mask where the motion evidence is good and its shape holds, *re-anchors* on the model's
mask when the flow-carried one has lost the convexity the model's still has (legs through the mitral
valve on the real loop), and takes the model's where the motion evidence is weak; "model", "trust"
(model boundary within a small band of the prior) and "prior" are the alternatives (docs/tracking.md has
the measurements behind the default). Encoding costs seconds on CPU while flow costs ~50 ms, so
skipping the encoder between model frames is what makes a 120-frame loop affordable; the scheduled
model frames are encoded ahead in the predictor's background thread. Confidence (``confidence.py``)
decides interventions: a frame whose confidence is <= ``threshold`` (``threshold > 0``) raises an
:class:`Intervention` and, with ``pause=True``, stops the run there.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Sequence

import cv2
import numpy as np
from scipy import ndimage

from ..errors import PromptError, SonoSAMError
from ..masks import box_with_margin, content_hash
from ..models import mask_to_logits
from ..predictor import Predictor
from ..prompts import PromptKind, Prompts
from .confidence import (BREAK_MOTION, Signals, area_score, combine, drift_score, mask_dice, shape_score,
                         solidity, stability_score)
from .motion import FlowEstimator, motion_prior

__all__ = ["Tracker", "TrackerOptions", "Fusion", "Anchor", "TrackedObject", "FrameResult", "Intervention", "RunReport"]

_REASONS = {
    "model_iou": "the model rates its own mask poorly (predicted IoU {v:.2f})",
    "stability": "the boundary is unstable under threshold changes (stability {v:.2f})",
    "agreement": "the model's mask and the motion-carried mask disagree (Dice {v:.2f})",
    "area": "the area changed abruptly against the last frames (area score {v:.2f})",
    "drift": "the mask has drifted from where optical flow alone carries the last keyframe (drift score {v:.2f})",
    "shape": "the mask lost the keyframe's convexity: leaking past a valve or along a wall? (shape score {v:.2f})",
    "motion": "the frame does not follow from the previous one (motion score {v:.2f}: blank frame, cut or fast motion?)",
}


@dataclass
class FrameResult:
    """One object's mask on one frame and how it was obtained."""
    mask: np.ndarray
    confidence: float
    source: str                                  # "keyframe" (user set/accepted), "model" or "motion"
    signals: Signals = field(default_factory=Signals)
    model_age: int = 0                           # frames since this object's last model or keyframe result
    chain: np.ndarray | None = None              # the last keyframe's mask carried by optical flow alone
    ref_solidity: float | None = None            # solidity of the keyframe this result descends from
    break_frame: int | None = None               # the first break (motion < BREAK_MOTION) since the last keyframe
    cap: float | None = None                     # the lowest confidence since that break: later frames keep it

    @property
    def is_keyframe(self) -> bool:
        return self.source == "keyframe"


@dataclass
class Intervention:
    """The tracker asks the user to look at ``object`` on ``frame``."""
    frame: int
    object: str
    reason: str
    confidence: float
    status: str = "pending"                      # pending -> corrected | accepted | dismissed

    def as_dict(self) -> dict:
        return {"frame": self.frame, "object": self.object, "confidence": round(self.confidence, 4),
                "reason": self.reason, "status": self.status}


@dataclass
class RunReport:
    paused: bool                                 # stopped on a frame that needs attention
    frame: int | None                            # that frame (None when the run finished)
    events: list[Intervention]                   # the interventions requested on that frame (or in the run)
    processed: int                               # (object, frame) results computed by this run


class TrackedObject:
    def __init__(self, name: str, n_frames: int, color=None, threshold: float | None = None):
        self.name = name
        self.color = color
        self.threshold = threshold           # None: the tracker's
        self.results: list[FrameResult | None] = [None] * n_frames
        self.keyframes: set[int] = set()

    @property
    def first_keyframe(self) -> int | None:
        return min(self.keyframes) if self.keyframes else None


class Fusion(str, enum.Enum):
    """Which mask a model frame keeps (TrackerOptions.fusion); str-valued like PromptKind, so "auto" and
    Fusion.AUTO are the same option (JSON from the server, keyword calls)."""
    AUTO = "auto"     # flow where its evidence is good, the model where it is not (re-anchoring: see Anchor)
    MODEL = "model"   # the model's mask
    TRUST = "trust"   # the model's boundary, moved at most `trust` from the prior's
    PRIOR = "prior"   # the flow-carried mask

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


class Anchor(str, enum.Enum):
    """When fusion "auto" re-anchors on the model's mask (TrackerOptions.anchor); str-valued."""
    SHAPE = "shape"    # when the carried mask's solidity falls behind the model's
    ALWAYS = "always"
    NEVER = "never"

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


def _member(cls, value, name: str):
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise SonoSAMError(f"{name} must be one of {choices}, not {value!r}.") from None


@dataclass
class TrackerOptions:
    """How the tracker weighs motion against the model and when it asks for help (tuning knobs; the
    measurements behind the defaults are in docs/tracking.md).

    threshold: confidence at or below which a frame requests an intervention (0: never; 1: always).
    model_every: run the model on every n-th frame from each keyframe (1: every frame); frames between
        are carried by optical flow unless their motion score is below ``encode_below``.
    encode_below: run the model on a frame whose motion evidence (motion score) is below this.
    use_mask_prompt: where the model's mask is kept (weak motion evidence; fusion "model"/"trust"), prompt
        with the warped mask as logits too (default True; it holds the mask through dropout frames). The
        model's *opinion* (agreement, re-anchoring) is always decoded from the fresh box alone: with the mask
        prompt the model echoes the prior, even where the prior leaks through the valve on the real loop.
    anchor: when ``fusion="auto"`` re-anchors on the model's mask: "shape" (default; when the flow-carried
        mask's solidity is more than ``anchor_solidity`` below the model's), "always" or "never"; only when
        the model's predicted IoU is >= ``anchor_iou``, it agrees with the prior at Dice >= 0.8 and its area
        is within 0.8-1.25 x the prior's. The re-anchored mask is the model's plus the prior's pixels within
        ``trust`` x the diameter of it (flow's legs are cut, its bites filled, its slightly wider boundary kept).
    box_margin / opinion_margin: the prompt box is the prior's bounding box grown by this share of its size,
        for the mask-guided decode (0.15) and for the box-only opinion (0.1: a box-only mask from a wider box
        is larger than the flow-carried mask, and re-anchoring on it every model frame grows the mask).
    trust: how far the model's boundary may move from the prior's (fusion "trust") or which prior pixels join a
        re-anchored mask, as a share of the structure's equivalent diameter.
    """
    threshold: float = 0.85
    model_every: int = 5
    encode_below: float = 0.7
    use_mask_prompt: bool = True
    box_margin: float = 0.15
    opinion_margin: float = 0.1
    fusion: Fusion = Fusion.AUTO
    trust: float = 0.03
    anchor: Anchor = Anchor.SHAPE
    anchor_iou: float = 0.8
    anchor_solidity: float = 0.02

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise SonoSAMError(f"The confidence threshold must lie in [0, 1]; got {self.threshold}.")
        if self.model_every < 1:
            raise SonoSAMError(f"model_every must be >= 1; got {self.model_every}.")
        self.fusion = _member(Fusion, self.fusion, "fusion")
        self.anchor = _member(Anchor, self.anchor, "anchor")
        self.threshold, self.encode_below = float(self.threshold), float(self.encode_below)
        self.model_every = int(self.model_every)


class Tracker:
    """See the module docstring. ``frames``: (T, H, W) uint8 (or any numeric; windowed by the model).

    options: a TrackerOptions (or its fields as keywords: ``Tracker(p, frames, threshold=0.9)``).
    pause: stop ``run()`` on the first frame that requests an intervention (else record and go on).
    prefetch: encode the scheduled model frames ahead in the predictor's background thread.
    key: names the loop in the embedding cache (None: frames are keyed by their content).
    flow: the optical-flow estimator (default: FlowEstimator()).
    """

    def __init__(self, predictor: Predictor, frames: np.ndarray, options: TrackerOptions | None = None, *,
                 pause: bool = True, prefetch: bool = True, key: str | None = None,
                 flow: FlowEstimator | None = None, **option_overrides):
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[0] < 1:
            raise SonoSAMError(f"A cine loop is a (T, H, W) array of frames; got shape {frames.shape}.")
        unknown = set(option_overrides) - {f.name for f in fields(TrackerOptions)}
        if unknown:
            raise TypeError(f"Unknown tracker option(s) {sorted(unknown)}; see TrackerOptions.")
        self.options = replace(options or TrackerOptions(), **option_overrides)  # validated in __post_init__
        self.predictor = predictor
        self.frames = frames
        self.pause = pause
        self.prefetch_enabled = prefetch
        self.flow = flow or FlowEstimator()
        self.key = key                           # None: frames are keyed by content (shared across loops)
        self._frame_keys: list = [None] * frames.shape[0]
        self.objects: dict[str, TrackedObject] = {}
        self.events: list[Intervention] = []
        self.timing = {"motion_s": 0.0, "encode_s": 0.0, "decode_s": 0.0, "total_s": 0.0}
        self.model_frames: set[int] = set()      # frames on which the model was run by the tracker
        self._prefetch_job = None

    # ------------------------------------------------------------------------------------------ setup
    @property
    def n_frames(self) -> int:
        return self.frames.shape[0]

    def frame_key(self, t: int):
        """The embedding-cache key of frame t: (key, t) when a key was given, else the frame's content hash."""
        if self.key is not None:
            return (self.key, int(t))
        if self._frame_keys[t] is None:
            self._frame_keys[t] = ("frame", content_hash(self.frames[t]))
        return self._frame_keys[t]

    def add_object(self, name: str, frame: int, mask: np.ndarray | None = None, box=None, points=None,
                   labels=None, color=None, threshold: float | None = None) -> np.ndarray:
        """Start tracking ``name`` from ``frame``: a mask, or prompts segmented with the model there.
        ``threshold`` overrides the tracker's for this object (e.g. lower for the LA, whose boundary the
        mitral leaflets sweep through)."""
        if name in self.objects:
            raise SonoSAMError(f"An object called {name!r} is already tracked; give each object its own name.")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise SonoSAMError(f"The confidence threshold must lie in [0, 1]; got {threshold}.")
        self.objects[name] = TrackedObject(name, self.n_frames, color, threshold)
        try:
            return self.correct(frame, name, mask=mask, box=box, points=points, labels=labels)
        except BaseException:
            del self.objects[name]
            raise

    def segment(self, frame: int, box=None, points=None, labels=None, mask_logits=None):
        """The model's prediction on ``frame`` for user prompts (uses and fills the embedding cache)."""
        return self.predictor.predict(self.frames[frame], Prompts(points, labels, box, mask_logits),
                                      key=self.frame_key(frame))

    def correct(self, frame: int, name: str, mask: np.ndarray | None = None, box=None, points=None,
                labels=None) -> np.ndarray:
        """Set ``name``'s mask on ``frame`` (given, or from prompts) as a keyframe; frames tracked from the old
        mask are recomputed by the next ``run()``. Returns the keyframe mask."""
        obj = self._object(name)
        frame = self._frame(frame)
        given = mask
        if mask is None:
            if box is None and points is None:
                raise PromptError("Give a mask, a box or points to set a keyframe.")
            mask = self.segment(frame, box=box, points=points, labels=labels).mask
        mask = np.asarray(mask).astype(bool)
        if mask.shape != self.frames.shape[1:]:
            raise SonoSAMError(f"The mask is {mask.shape}; the frames are {self.frames.shape[1:]}.")
        if not mask.any():   # nothing to track from: every later frame would fail as a "vanished" mask
            how = "the model found nothing for these prompts" if given is None else "the mask given is empty"
            raise PromptError(f"{name!r} on frame {frame}: {how}; give the structure's mask, or a box or points on it.")
        self._set_keyframe(obj, frame, mask, "corrected")
        return mask

    def accept(self, frame: int, name: str) -> None:
        """The user accepts the tracker's mask on ``frame``: it becomes a keyframe as it is."""
        obj = self._object(name)
        result = obj.results[self._frame(frame)]
        if result is None:
            raise SonoSAMError(f"{name!r} has no mask on frame {frame} yet: run the tracker first, or correct it.")
        self._set_keyframe(obj, frame, result.mask, "accepted")

    def _set_keyframe(self, obj: TrackedObject, frame: int, mask: np.ndarray, status: str) -> None:
        obj.keyframes.add(frame)
        obj.results[frame] = FrameResult(mask.copy(), 1.0, "keyframe", Signals(), 0, mask.copy(), solidity(mask))
        for other in self.objects.values():  # what the user just set wins over other objects' masks there
            if other is not obj and other.results[frame] is not None:
                other.results[frame].mask = other.results[frame].mask & ~mask
        for event in self.events:
            if event.frame == frame and event.object == obj.name and event.status == "pending":
                event.status = status
        # Invalidate what was derived from the old state: forward up to the next keyframe ...
        later = [k for k in obj.keyframes if k > frame]
        for t in range(frame + 1, min(later) if later else self.n_frames):
            obj.results[t] = None
        # ... and backward to the start when this is now the first keyframe.
        if frame == obj.first_keyframe:
            for t in range(frame):
                obj.results[t] = None

    def rerun(self, on_progress: Callable[[int, int], None] | None = None) -> RunReport:
        """Recompute every frame that is not a keyframe (e.g. after changing the threshold or model_every)."""
        for obj in self.objects.values():
            for t in range(self.n_frames):
                if t not in obj.keyframes:
                    obj.results[t] = None
        return self.run(on_progress)

    # ------------------------------------------------------------------------------------------ running
    def _plan(self) -> list[tuple[int, int]]:
        """(frame, direction) positions in processing order: a forward sweep, then a backward one."""
        return [(t, +1) for t in range(self.n_frames)] + [(t, -1) for t in range(self.n_frames - 1, -1, -1)]

    def _todo(self, t: int, direction: int, ready: bool = True) -> list[TrackedObject]:
        """Objects whose result at t is missing and is derived in this sweep direction; with `ready`,
        only those whose neighbour on the sweep's side already has a result (trackable now)."""
        todo = []
        for obj in self.objects.values():
            first = obj.first_keyframe
            if first is None or obj.results[t] is not None:
                continue
            if not ((direction > 0 and t > first) or (direction < 0 and t < first)):
                continue
            if not ready or obj.results[t - direction] is not None:
                todo.append(obj)
        return todo

    def _scheduled(self, obj: TrackedObject, t: int, direction: int) -> bool:
        """Model frames on a grid anchored at the keyframe the sweep comes from (known ahead: prefetchable)."""
        if direction > 0:
            anchor = max(k for k in obj.keyframes if k < t)
            return (t - anchor) % self.options.model_every == 0
        return (obj.first_keyframe - t) % self.options.model_every == 0

    def _start_prefetch(self) -> None:
        if not self.prefetch_enabled:
            return
        wanted: list[int] = []
        for t, direction in self._plan():
            todo = self._todo(t, direction, ready=False)
            if any(self._scheduled(obj, t, direction) for obj in todo) and t not in wanted:
                wanted.append(t)
        wanted = [t for t in wanted if not self.predictor.is_cached(self.frame_key(t))]
        if self._prefetch_job is not None:
            self._prefetch_job.cancel()
        if wanted:
            frames = self.frames
            self._prefetch_job = self.predictor.prefetch(
                [(self.frame_key(t), (lambda t=t: frames[t])) for t in wanted])

    def run(self, on_progress: Callable[[int, int], None] | None = None) -> RunReport:
        """Track every frame still to do; with ``pause`` stop after the first frame that requests an
        intervention (run again to resume; pending requests left unanswered are then dismissed)."""
        for event in self.events:
            if event.status == "pending":
                event.status = "dismissed"
        if not self.objects:
            raise SonoSAMError("No object to track: add one with add_object() first.")
        start = time.perf_counter()
        self._start_prefetch()
        processed = 0
        run_events: list[Intervention] = []
        plan = self._plan()
        total = sum(1 for t, d in plan if self._todo(t, d, ready=False))
        done = 0
        try:
            for t, direction in plan:
                todo = self._todo(t, direction)
                if not todo:
                    continue
                events = self._track_frame(t, direction, todo)
                processed += len(todo)
                done += 1
                # the frame's requests are recorded before on_progress, which may raise to pause or cancel
                self.events.extend(events)
                run_events.extend(events)
                if on_progress is not None:
                    on_progress(done, total)
                if events and self.pause:
                    return RunReport(True, t, events, processed)
            return RunReport(False, None, run_events, processed)
        finally:
            self.timing["total_s"] += time.perf_counter() - start

    def _track_frame(self, t: int, direction: int, todo: Sequence[TrackedObject]) -> list[Intervention]:
        frame = self.frames[t]
        src_t = t - direction
        priors = {}
        tic = time.perf_counter()
        for obj in todo:
            source = obj.results[src_t]
            chain = source.chain if source.chain is not None else source.mask
            priors[obj.name] = motion_prior(self.flow, self.frames[src_t], frame, source.mask, carry=(chain,))
        self.timing["motion_s"] += time.perf_counter() - tic

        # A blank (constant) frame carries no image evidence: nothing to encode, the last mask is kept
        # as the proposal and the motion signal (0 on a flat frame) flags it.
        blank = float(np.asarray(frame).max()) - float(np.asarray(frame).min()) < 1.0
        use_model = False
        for obj in todo:
            if blank:
                source = obj.results[src_t]
                chain = source.chain if source.chain is not None else source.mask
                priors[obj.name] = type(priors[obj.name])(source.mask.copy(), source.mask.astype(np.float32),
                                                          0.0, 0.0, 0.0, [chain.copy()])
                continue
            if self._scheduled(obj, t, direction) or priors[obj.name].score < self.options.encode_below:
                use_model = True
            elif self.options.fusion == "auto" and self.options.anchor != "never" \
                    and (self._shape(priors[obj.name].mask, obj.results[src_t]) or 1.0) < self.options.encode_below:
                use_model = True  # the flow-carried mask is losing its shape: ask the model now, not later
        if use_model:
            tic = time.perf_counter()
            embedding = self.predictor.embedding(frame, key=self.frame_key(t))
            self.timing["encode_s"] += time.perf_counter() - tic
            self.model_frames.add(t)

        new: dict[str, FrameResult] = {}
        for obj in todo:
            prior = priors[obj.name]
            source = obj.results[src_t]
            recent = self._recent_areas(obj, src_t, direction)
            if use_model:
                new[obj.name] = self._model_result(embedding, prior, source, recent)
            else:
                area = area_score(float(prior.mask.sum()), recent)
                signals = Signals(source.signals.model_iou, source.signals.stability, source.signals.agreement,
                                  area, prior.score, drift_score(mask_dice(prior.mask, prior.carried[0])),
                                  self._shape(prior.mask, source))
                new[obj.name] = FrameResult(prior.mask, combine(signals), "motion", signals, source.model_age + 1)
            new[obj.name].chain = prior.carried[0]
            new[obj.name].ref_solidity = source.ref_solidity
            self._after_break(new[obj.name], source, prior.score, t)
        self._resolve_overlap(t, new)
        events = []
        for obj in todo:
            result = new[obj.name]
            obj.results[t] = result
            threshold = self.options.threshold if obj.threshold is None else obj.threshold
            if threshold > 0 and result.confidence <= threshold:
                events.append(Intervention(t, obj.name, self._reason(result, frame), result.confidence))
        return events

    def _model_result(self, embedding, prior, source: FrameResult, recent) -> FrameResult:
        prompt_mask = prior.mask if prior.mask.any() else source.mask
        box = self._box(prompt_mask)
        points = labels = None
        kinds = self.predictor.model.spec.prompt_kinds
        if PromptKind.POINT in kinds and prompt_mask.any():
            dist = ndimage.distance_transform_edt(prompt_mask)
            row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
            points, labels = [(float(col), float(row))], [1]
        # The model's independent opinion: a fresh box (and point) around the prior, no mask logits.
        tic = time.perf_counter()
        opinion = self.predictor.model.decode(
            embedding, Prompts(points, labels, self._box(prompt_mask, self.options.opinion_margin)), multimask=False)
        opinion_mask = _clean(opinion.mask)
        agreement = mask_dice(prior.mask, opinion_mask)
        fusion = self.options.fusion
        if fusion == "auto":  # flow where its evidence is good, the model where it is not
            fusion = "prior" if prior.score >= self.options.encode_below else "model"
            if fusion == "prior" and self._anchor(prior.mask, opinion_mask, float(opinion.score), agreement, source):
                fusion = "anchor"
        pred, model_mask = opinion, opinion_mask
        if fusion in ("model", "trust") and self.options.use_mask_prompt:
            # Where the model's mask is kept, the prior's shape guides it (through dropout frames box + mask
            # prompt holds the structure where the box alone loses it; docs/tracking.md).
            pred = self.predictor.model.decode(embedding, Prompts(points, labels, box, mask_to_logits(prior.soft)),
                                               multimask=False)
            model_mask = _clean(pred.mask)
        self.timing["decode_s"] += time.perf_counter() - tic
        if fusion != "prior" and mask_dice(prior.mask, model_mask) < 0.5:
            fusion = "prior"   # the model contradicts the motion prior outright: keep the carried mask
        if fusion == "prior":
            mask = prior.mask
        elif fusion == "anchor":
            mask = _reanchor(prior.mask, model_mask, self.options.trust)
        elif fusion == "trust":
            mask = _trust_region(prior.mask, model_mask, self.options.trust)
        else:
            mask = model_mask
        signals = Signals(float(pred.score), stability_score(pred.logits), agreement,
                          area_score(float(mask.sum()), recent), prior.score,
                          drift_score(mask_dice(mask, prior.carried[0])), self._shape(mask, source))
        return FrameResult(mask, combine(signals), "model", signals, 0)

    def _anchor(self, prior: np.ndarray, model: np.ndarray, model_iou: float, agreement: float,
                source: FrameResult) -> bool:
        """Re-anchor to the model's mask (instead of the flow-carried one) on a model frame?"""
        if self.options.anchor == "never" or model_iou < self.options.anchor_iou or agreement < 0.8:
            return False
        ratio = float(model.sum()) / max(1.0, float(prior.sum()))
        if not 0.8 <= ratio <= 1.25:
            return False
        if self.options.anchor == "always":
            return True
        return solidity(prior) < solidity(model) - self.options.anchor_solidity

    @staticmethod
    def _after_break(result: FrameResult, source: FrameResult, motion: float, t: int) -> None:
        """A mask carried through a frame that does not follow from its neighbour (motion < BREAK_MOTION) is no
        better known after it: every later frame keeps the lowest confidence since the break, until a keyframe.
        Nothing after the break can tell that the mask recovered (``drift`` follows the same flows through it)."""
        if source.cap is not None:
            result.confidence = min(result.confidence, source.cap)
            result.cap, result.break_frame = result.confidence, source.break_frame
        if motion < BREAK_MOTION:
            result.cap = result.confidence
            result.break_frame = t if result.break_frame is None else result.break_frame

    @staticmethod
    def _shape(mask: np.ndarray, source: FrameResult) -> float | None:
        if source.ref_solidity is None:
            return None
        return shape_score(solidity(mask), source.ref_solidity)

    def _box(self, mask: np.ndarray, margin: float | None = None):
        box = box_with_margin(mask, self.options.box_margin if margin is None else margin)
        if box is None:
            raise SonoSAMError("The tracked mask vanished: there is nothing to prompt the model with.")
        return box

    def _recent_areas(self, obj: TrackedObject, src_t: int, direction: int) -> list[float]:
        areas = []
        t = src_t
        while 0 <= t < self.n_frames and len(areas) < 5 and obj.results[t] is not None:
            areas.append(float(obj.results[t].mask.sum()))
            t -= direction
        return areas[::-1]

    def _resolve_overlap(self, t: int, new: dict[str, FrameResult]) -> None:
        """Objects must not overlap: a pixel claimed twice goes to the keyframe, else the more confident."""
        entries = []
        for obj in self.objects.values():
            result = new.get(obj.name, obj.results[t])
            if result is not None:
                entries.append((result.is_keyframe, result.confidence, obj.name, result))
        if len(entries) < 2:
            return
        entries.sort(key=lambda e: (e[0], e[1]), reverse=True)
        claimed = np.zeros(self.frames.shape[1:], bool)
        for _, _, name, result in entries:
            if name in new:
                result.mask = result.mask & ~claimed
            claimed |= result.mask

    def _reason(self, result: FrameResult, frame: np.ndarray) -> str:
        if float(np.asarray(frame).std()) < 2.0:
            return f"blank frame (confidence {result.confidence:.2f})"
        if result.break_frame is not None and combine(result.signals) > result.confidence + 1e-9:
            return (f"low confidence {result.confidence:.2f}: no keyframe since frame {result.break_frame}, which does "
                    "not follow from its neighbour (blank frame, cut or noise): the mask carried through it is "
                    "unchecked; correct or accept a frame after it")
        values = {k: v for k, v in result.signals.as_dict().items() if v is not None}
        if not values:
            return f"low confidence {result.confidence:.2f}"
        worst = min(values, key=values.get)
        return f"low confidence {result.confidence:.2f}: " + _REASONS[worst].format(v=values[worst])

    # ------------------------------------------------------------------------------------------ results
    def result(self, frame: int, name: str) -> FrameResult | None:
        return self._object(name).results[self._frame(frame)]

    def masks(self, name: str) -> np.ndarray:
        """(T, H, W) bool; frames not tracked yet are empty."""
        out = np.zeros(self.frames.shape, bool)
        for t, result in enumerate(self._object(name).results):
            if result is not None:
                out[t] = result.mask
        return out

    def labelmap(self) -> np.ndarray:
        """(T, H, W) uint8: object i (in the order added) has label i + 1 (objects never overlap)."""
        out = np.zeros(self.frames.shape, np.uint8)
        for label, name in enumerate(self.objects, start=1):
            out[self.masks(name)] = label
        return out

    def confidences(self) -> np.ndarray:
        """(T, n_objects) confidence; NaN where not tracked yet."""
        out = np.full((self.n_frames, len(self.objects)), np.nan)
        for j, obj in enumerate(self.objects.values()):
            for t, result in enumerate(obj.results):
                if result is not None:
                    out[t, j] = result.confidence
        return out

    def pending(self) -> list[Intervention]:
        return [e for e in self.events if e.status == "pending"]

    def next_attention(self, after: int = -1) -> int | None:
        """The next frame after ``after`` whose latest request is still pending or whose confidence is at or
        below the threshold (for "jump to the next frame that needs attention")."""
        for t in range(after + 1, self.n_frames):
            for obj in self.objects.values():
                result = obj.results[t]
                threshold = self.options.threshold if obj.threshold is None else obj.threshold
                if result is not None and not result.is_keyframe and threshold > 0 \
                        and result.confidence <= threshold:
                    return t
        return None

    def close(self) -> None:
        if self._prefetch_job is not None:
            self._prefetch_job.cancel()

    def _object(self, name: str) -> TrackedObject:
        try:
            return self.objects[name]
        except KeyError:
            raise SonoSAMError(f"No tracked object {name!r}; tracked: {', '.join(self.objects) or 'none'}.") from None

    def _frame(self, frame: int) -> int:
        frame = int(frame)
        if not 0 <= frame < self.n_frames:
            raise SonoSAMError(f"Frame {frame} is outside the loop (0..{self.n_frames - 1}).")
        return frame


def _clean(mask: np.ndarray) -> np.ndarray:
    """Largest connected component with holes filled (SAM masks can carry specks)."""
    if not mask.any():
        return mask
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def _trust_region(prior: np.ndarray, model: np.ndarray, trust: float) -> np.ndarray:
    """The model's boundary, allowed to move at most ``trust`` x the structure's equivalent diameter (>= 1 px)
    away from the prior's: (model & dilate(prior, r)) | erode(prior, r)."""
    radius = max(1, int(round(trust * 2.0 * np.sqrt(prior.sum() / np.pi))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    grown = cv2.dilate(prior.astype(np.uint8), kernel) > 0
    shrunk = cv2.erode(prior.astype(np.uint8), kernel) > 0
    return (model & grown) | shrunk


def _reanchor(prior: np.ndarray, model: np.ndarray, band: float) -> np.ndarray:
    """The model's mask plus the part of the prior within ``band`` x the structure's equivalent diameter of it:
    what flow carried past the model's boundary (legs through a valve) is cut, what it lost inside the model's
    mask (bites) is filled, and where flow is a little wider than the model's (often tight) boundary it stays."""
    radius = max(1, int(round(band * 2.0 * np.sqrt(model.sum() / np.pi))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    near = cv2.dilate(model.astype(np.uint8), kernel) > 0
    return _clean((prior & near) | model)
