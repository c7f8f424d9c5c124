"""A prompt answered in a crop around its box, zoomed to the model's input.

The encoder sees an image resized so its longest side spans its input (256 px for LiteMedSAM): a 15 px
structure on a 200 px slice covers four or five cells of the 64x64 embedding. Encoding a square crop of
`context` times the box's longest side instead gives the same structure several times the cells. The
answer comes back in the whole image's frame, so callers see an ordinary `Prediction`. A single crop wins on some
structures and loses on others; the whole image's and two crops' logits averaged (`decode_multiscale`) is what a
user's box gets from the models whose metadata names those scales (`interactive_predictor`); the clicks that then
correct it are answered on the whole image. Where each helps and where it does not: docs/training.md ("A box answered
on a zoomed crop", "A box answered at three scales", "A box's corrections answered on the whole image") and
docs/volume.md (stops 44 and 45: propagation stays on the whole slice).
"""

from __future__ import annotations

import numpy as np

from .errors import SonoSAMError
from .prompts import LOW_RES, Prediction, Prompts, as_prompts, low_res_frame

OUTSIDE = -20.0  # the logit given to pixels outside the crop: surely background


def zoom_crop(box, shape: tuple[int, int], context: float, min_side: int) -> tuple[int, int, int, int] | None:
    """The square crop (x0, y0, x1, y1; ends exclusive) centred on ``box``, ``context`` times its longest side and at
    least ``min_side`` px, moved inside an image of ``shape`` (H, W) where it would cross an edge (cut only where
    the image is narrower); None when it would hold the whole image (zooming would change nothing)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = int(np.ceil(max(x1 - x0 + 1, y1 - y0 + 1, 1.0) * context - 1e-9))
    side = max(side, int(min_side))

    def span(low: float, high: float, size: int) -> tuple[int, int]:
        if side >= size:
            return 0, size
        start = int(np.floor((low + high + 1) / 2 - side / 2 + 0.5))   # pixel x0..x1 spans [x0, x1 + 1)
        start = min(max(start, 0), size - side)
        return start, start + side

    height, width = shape
    (left, right), (top, bottom) = span(x0, x1, width), span(y0, y1, height)
    if (left, top, right, bottom) == (0, 0, width, height):
        return None
    return left, top, right, bottom


def logits_to_pixels(logits: np.ndarray, shape) -> np.ndarray:
    """A (256, 256) low-res logits frame -> the logits at every pixel of an image of ``shape``."""
    import cv2

    h, w = low_res_frame(shape)
    return cv2.resize(np.ascontiguousarray(logits[:h, :w], np.float32), (shape[1], shape[0]),
                      interpolation=cv2.INTER_LINEAR)


def pixels_to_logits(field: np.ndarray) -> np.ndarray:
    """Per-pixel logits of an image -> its (256, 256) low-res frame (the inverse of `logits_to_pixels`)."""
    import cv2

    h, w = low_res_frame(field.shape)
    shrinking = field.shape[0] > h or field.shape[1] > w
    canvas = np.full((LOW_RES, LOW_RES), OUTSIDE, np.float32)
    canvas[:h, :w] = cv2.resize(np.ascontiguousarray(field, np.float32), (w, h),
                                interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return canvas


def crop_prompts(prompts: Prompts, crop, shape) -> Prompts:
    """``prompts`` on an image of ``shape``, moved into ``crop``'s frame (points and box clipped to it, the mask
    prompt resampled)."""
    left, top, right, bottom = crop
    limit = np.array([right - left - 1, bottom - top - 1], np.float32)
    offset = np.array([left, top], np.float32)
    points = None if not prompts.has_points else np.clip(prompts.points - offset, 0, limit)
    box = None
    if prompts.box is not None:
        box = np.clip(np.asarray(prompts.box, np.float32) - np.tile(offset, 2), 0, np.tile(limit, 2))
    mask = None
    if prompts.mask_logits is not None:
        mask = pixels_to_logits(logits_to_pixels(prompts.mask_logits, shape)[top:bottom, left:right])
    return Prompts(points, prompts.labels if points is not None else None, box, mask)


def prompt_extent(prompts: Prompts) -> tuple[float, float, float, float]:
    """The box holding ``prompts``' box and clicks: a crop around it keeps every click inside."""
    corners = [np.asarray(prompts.box, np.float64).reshape(2, 2)] if prompts.box is not None else []
    if prompts.has_points:
        corners.append(np.asarray(prompts.points, np.float64))
    corners = np.concatenate(corners)
    return (*corners.min(axis=0), *corners.max(axis=0))


def prompt_crop(prompts: Prompts, shape: tuple[int, int], context: float, min_side: int):
    """The crop (`zoom_crop`) that ``prompts``' answer at ``context`` is decoded on: around the box and the clicks."""
    return zoom_crop(prompt_extent(prompts), shape, context, min_side)


def decode_zoomed(model, shape: tuple[int, int], prompts: Prompts, embed, *, context: float, min_side: int,
                  multimask: bool = False) -> Prediction:
    """``prompts`` (with a box) on an image of ``shape`` answered by ``model`` on the crop around the box and the
    clicks (`zoom_crop` of `prompt_extent`); ``embed(crop)`` gives the crop's embedding (``embed(None)``: the whole
    image's, used when the crop would be the whole image). Masks and logits come back in the image's frame."""
    crop = prompt_crop(prompts, shape, context, min_side)
    if crop is None:
        return model.decode(embed(None), prompts, multimask=multimask)
    left, top, right, bottom = crop
    pred = model.decode(embed(crop), crop_prompts(prompts, crop, shape), multimask=multimask)
    n = len(pred.masks)
    masks = np.zeros((n,) + tuple(shape), bool)
    masks[:, top:bottom, left:right] = pred.masks
    logits = np.empty((n, LOW_RES, LOW_RES), np.float32)
    for i in range(n):
        field = np.full(shape, OUTSIDE, np.float32)
        field[top:bottom, left:right] = logits_to_pixels(pred.low_res_logits[i], (bottom - top, right - left))
        logits[i] = pixels_to_logits(field)
    return Prediction(masks, pred.scores, logits, list(pred.notes))


def decode_multiscale(model, shape: tuple[int, int], prompts: Prompts, embed, *, contexts, min_side: int,
                      multimask: bool = False) -> Prediction:
    """``prompts`` (with a box) answered at several scales, their logits averaged at every pixel: a context of None is
    the whole image, a number the crop `decode_zoomed` takes. One scale's mistake is outvoted where the others agree.
    With ``multimask`` the average comes first and the whole image's alternatives follow it (the heads of different
    scales are not aligned, so only the best answers are averaged)."""
    answers = [model.decode(embed(None), prompts) if context is None else
               decode_zoomed(model, shape, prompts, embed, context=context, min_side=min_side) for context in contexts]
    field = np.mean([logits_to_pixels(answer.logits, shape) for answer in answers], axis=0)
    masks, scores, logits = [field > 0], [np.mean([answer.score for answer in answers])], [pixels_to_logits(field)]
    notes = [note for answer in answers for note in answer.notes]
    if multimask:
        alternatives = model.decode(embed(None), prompts, multimask=True)
        masks += list(alternatives.masks)
        scores += list(alternatives.scores)
        logits += list(alternatives.low_res_logits)
    return Prediction(np.array(masks), np.array(scores, np.float32), np.array(logits, np.float32),
                      list(dict.fromkeys(notes)))


def check_scales(context) -> tuple:
    """``context`` (a number, or a list of numbers and None) as a tuple of scales: None is the whole image, a number
    >= 1 a crop that many times the box; SonoSAMError naming the problem otherwise."""
    scales = tuple(context) if isinstance(context, (tuple, list)) else (context,)
    for scale in scales:
        number = isinstance(scale, (int, float, np.number)) and not isinstance(scale, bool)
        if scale is not None and not (number and np.isfinite(scale) and scale >= 1):
            raise SonoSAMError(f"context={context!r}: a crop is this many times the box's longest side, so give "
                               "numbers >= 1 (e.g. 3, or None for the whole image); below 1 the crop would cut "
                               "the box.")
    if not scales:
        raise SonoSAMError("context=(): give at least one scale (None for the whole image, or a number >= 1).")
    return scales


class ZoomedPredictor:
    """A `Predictor` whose answers to prompts with a box come from the zoomed crop around the box and the clicks
    (`decode_zoomed`), or, given several scales (``context=(None, 1.5, 3)``: None is the whole image), from their
    averaged logits (`decode_multiscale`); prompts without a box are answered on the whole image, from the
    predictor's cache, and so are a box's corrective clicks with ``zoom_clicks=False`` (the box alone is zoomed)."""

    def __init__(self, predictor, context=3.0, min_side: int = 32, zoom_clicks: bool = True):
        if not min_side >= 8:
            raise SonoSAMError(f"min_side={min_side!r}: give at least 8 px (e.g. 32), the smallest crop the encoder "
                               "takes.")
        self.predictor, self.model = predictor, predictor.model
        self.scales, self.min_side, self.zoom_clicks = check_scales(context), min_side, zoom_clicks

    def zooms(self, prompts: Prompts) -> bool:
        """Whether ``prompts`` are answered on crops (else on the whole image)."""
        return prompts.box is not None and (self.zoom_clicks or not prompts.has_points)

    def predict(self, image, prompts: Prompts | None = None, *, multimask: bool = False, key=None, window=None,
                **conveniences) -> Prediction:
        prompts = as_prompts(prompts, **conveniences)
        if not self.zooms(prompts):
            return self.predictor.predict(image, prompts, multimask=multimask, key=key, window=window)
        pixels = image() if callable(image) else np.asarray(image)
        embed = lambda crop: self._embedding(pixels, crop, key, window)
        if len(self.scales) == 1 and self.scales[0] is not None:
            return decode_zoomed(self.model, pixels.shape[:2], prompts, embed, context=self.scales[0],
                                 min_side=self.min_side, multimask=multimask)
        return decode_multiscale(self.model, pixels.shape[:2], prompts, embed, contexts=self.scales,
                                 min_side=self.min_side, multimask=multimask)

    def prepare(self, image, prompts: Prompts, *, key=None, window=None) -> int:
        """Encode ahead the crops that ``prompts``' answer needs into the predictor's cache (a server does it in a
        job, so that the GUI does not wait for them); returns how many crops there are."""
        if not self.zooms(prompts):
            return 0
        pixels = image() if callable(image) else np.asarray(image)
        crops = {prompt_crop(prompts, pixels.shape[:2], scale, self.min_side) for scale in self.scales
                 if scale is not None} - {None}
        for crop in crops:
            self._embedding(pixels, crop, key, window)
        return len(crops)

    def _embedding(self, pixels, crop, key, window):
        """The whole image's embedding (crop None) or a crop's; crops share the predictor's cache under the image's
        key, so that a keyed image's next clicks reuse them."""
        if crop is None:
            return self.predictor.embedding(pixels, key, window)
        left, top, right, bottom = crop
        return self.predictor.embedding(np.ascontiguousarray(pixels[top:bottom, left:right]),
                                        None if key is None else (key, "crop", crop), window)


class BoxSessionPredictor:
    """A `Predictor` whose prompts holding a box (a box, and the corrective clicks after it) are answered by
    ``box_model`` (`ModelSpec.box_sessions_of`) from the predictor's own embeddings; every other prompt, and every
    other call, as ``predictor`` answers it."""

    def __init__(self, predictor, box_model):
        self.predictor, self.model = predictor, box_model

    def __getattr__(self, name):   # the cache, prefetch, encoder_calls ...: the predictor's
        return getattr(self.predictor, name)

    def predict(self, image, prompts: Prompts | None = None, *, multimask: bool = False, key=None, window=None,
                **conveniences) -> Prediction:
        prompts = as_prompts(prompts, **conveniences)
        if prompts.box is None:
            return self.predictor.predict(image, prompts, multimask=multimask, key=key, window=window)
        return self.model.decode(self.predictor.embedding(image, key, window), prompts, multimask=multimask)


def describe_pipeline(predictor) -> str:
    """In words, what answers ``predictor``'s prompts (``interactive_predictor``'s wrappers, outermost first)."""
    parts = []
    while predictor is not None:
        if isinstance(predictor, ZoomedPredictor):
            scales = ", ".join("the whole image" if s is None else f"{s:g} x the box" for s in predictor.scales)
            parts.append(f"a box answered at {scales} (averaged)"
                         + ("" if predictor.zoom_clicks else ", its corrective clicks on the whole image"))
        elif isinstance(predictor, BoxSessionPredictor):
            parts.append(f"box sessions by the decoder of {getattr(predictor.model.spec, 'name', '?')}")
        else:
            parts.append(f"{type(predictor).__name__} on the whole image")
        predictor = predictor.__dict__.get("predictor")
    return "; ".join(parts)


def interactive_predictor(predictor):
    """What a user's prompts go through: a box answered at the scales its model was measured best at
    (`ModelSpec.box_scales`; docs/training.md, "A box answered at three scales"), its corrective clicks and everything
    else as ``predictor`` answers it, on the whole image ("A box's corrections answered on the whole image"); a box
    session by the model's box decoder where it has one (`ModelSpec.box_sessions_of`, `BoxSessionPredictor`).
    ``predictor`` itself where its model answers on the whole image with one decoder, or where it is a server's client
    (the server applies its model's route)."""
    model = getattr(predictor, "model", None)
    spec = getattr(model, "spec", None)
    box_model = getattr(model, "box_session_model", None)
    if box_model is not None:
        predictor = BoxSessionPredictor(predictor, box_model)
    scales = tuple(getattr(spec, "box_scales", (None,)))
    return predictor if scales == (None,) else ZoomedPredictor(predictor, scales, zoom_clicks=False)
