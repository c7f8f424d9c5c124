"""Small rules on 2D masks and arrays that several parts of the core share: one home for each.

Masks are ``[row, col]`` boolean arrays; boxes are ``(x0, y0, x1, y1)`` with x = column, y = row,
inclusive pixel corners (docs/CORE_API.md).
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["bounding_box", "box_with_margin", "dice", "iou", "content_hash", "local_correction"]


def bounding_box(mask) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` of the mask's pixels, inclusive; None for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def box_with_margin(mask, margin: float, min_margin: float = 2.0) -> tuple[float, float, float, float] | None:
    """The bounding box grown on each side by ``margin`` x its width (x) or height (y), at least
    ``min_margin`` pixels, clipped to the image; None for an empty mask. The prompt box that propagation
    and tracking give the model around a mask they carry."""
    mask = np.asarray(mask, dtype=bool)
    box = bounding_box(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    height, width = mask.shape
    mx, my = max(min_margin, margin * (x1 - x0 + 1)), max(min_margin, margin * (y1 - y0 + 1))
    return (float(max(0, x0 - mx)), float(max(0, y0 - my)), float(min(width - 1, x1 + mx)),
            float(min(height - 1, y1 + my)))


def _pair(a, b, names=("prediction", "ground truth")) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).astype(bool, copy=False), np.asarray(b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"Masks differ in shape: {names[0]} {a.shape}, {names[1]} {b.shape}.")
    return a, b


def dice(a, b) -> float:
    """Dice similarity coefficient 2|A&B| / (|A| + |B|); 1.0 when both masks are empty."""
    a, b = _pair(a, b)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(a, b) -> float:
    """Intersection over union (Jaccard); 1.0 when both masks are empty."""
    a, b = _pair(a, b)
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(a, b).sum()) / union


CORRECTION_REACH = 3.0   # a correction keeps what lies within this many click depths of the click
TAKEOVER_FRACTION = 0.1  # a correction that adds this fraction of what it removes brings in a structure of its own


def local_correction(previous, new, click, positive: bool | None = None, alone=None, box=None,
                     earlier=(), image=None, window=None, alternative: bool = False) -> np.ndarray:
    """The mask after a corrective click ``click`` = (x, y): the model's new answer ``new`` where it changed the
    clicked pixel, that is on the connected part of (``new`` XOR ``previous``) under the click, and ``previous``
    everywhere else. A correction then cannot undo what earlier prompts got right elsewhere in the image (the
    click-trained decoders here redraw the whole mask on each click, and their first correction often lowers the
    Dice). ``box`` (x0, y0, x1, y1), the box the user drew, if any: the correction adds nothing outside it unless
    the click itself lies outside it (a box says how far the structure reaches). ``earlier``: the clicks before
    this one, ((x, y), positive) pairs: the correction changes no pixel nearer an earlier click of the other kind
    than this click (a click says what its neighbourhood is; a later click does not overrule it there).

    With the click's sign (``positive``) known, its depth (the distance from the click to the nearest pixel of the
    other kind in ``previous``) sizes it: a correction keeps only what lies within ``CORRECTION_REACH`` depths of
    the click. The click models here ignore about half of all corrective clicks (the clicked pixel keeps its
    value): for a positive click ignored so, ``alone()`` (optional) gives the model's mask for that click by
    itself, and the part of it under the click is added; a click still not reached changes the disk of one depth
    around it (a negative click takes the largest bite around it inside the mask, a positive one adds the disk
    that just reaches it), kept local the same way.

    ``image`` (optional; the slice, (H, W) or (H, W, C), clipped to ``window`` as the model sees it): a negative
    click deep inside the mask (at least half its largest depth) on a spot that looks unlike the mask removes only
    what looks like that spot (`_looks_like_click`): a click on the ventricles inside a brain mask makes a hole
    instead of cutting the brain open. ``alternative``: ``previous`` began as one of the seed check's alternatives
    (`sonosam.seed_check`: the suggestion a box's preview shows, or a listed mask picked), a mask chosen for its
    contrast: there that rule holds at any depth (what such a mask wrongly took in differs from its body, and the
    model's answer, which read the box otherwise, does not say where the shown structure ends), and such a click
    adds nothing; on a spot that looks like such a mask a negative click removes only within its depth (the largest
    disk around it inside the mask), unless the model's answer brings in a structure of its own (it adds at least
    ``TAKEOVER_FRACTION`` of what it removes: the shown mask may be wholly wrong). docs/training.md and docs/volume.md
    measure each rule."""
    previous, new = _pair(previous, new, ("previous mask", "new answer"))
    x, y = (int(round(float(v))) for v in click)
    if not (0 <= y < new.shape[0] and 0 <= x < new.shape[1]):
        return previous.copy()
    from scipy import ndimage

    if previous[y, x] == new[y, x] and positive and alone is not None and not previous[y, x]:
        parts, _ = ndimage.label(_pair(previous, alone(), ("previous mask", "answer to the click alone"))[1])
        new = previous | (parts == parts[y, x]) if parts[y, x] else previous
    corrected = _kept_local(previous, new, click, positive, box, earlier)
    kind = previous[y, x]
    if positive is None or bool(positive) == kind or (previous == kind).all():
        return corrected   # no sign, nothing to correct, or no depth: the other kind is nowhere
    depth = ndimage.distance_transform_edt(previous == kind)[y, x]
    rows, cols = np.indices(previous.shape)
    distance = np.hypot(cols - x, rows - y)
    if corrected[y, x] == bool(positive):
        result = np.where(distance <= CORRECTION_REACH * depth, corrected, previous)
    else:
        painted = np.where(distance <= depth, bool(positive), previous)
        result = _kept_local(previous, painted, click, positive, box, earlier)
    if image is not None and not positive:
        like = _looks_like_click(previous, image, window, (x, y), depth, anywhere=alternative)
        if like is not None:
            if alternative:
                result &= previous   # the model read the box otherwise: its additions are not the shown structure
            result |= previous & ~like
        elif alternative and (result & ~previous).sum() < TAKEOVER_FRACTION * (previous & ~result).sum():
            # what it wrongly took in looks like it, and the model's answer only takes away: remove near the click
            result |= previous & (distance > depth)
    return result


def _looks_like_click(mask, image, window, xy, depth, anywhere: bool = False) -> np.ndarray | None:
    """Where a negative click at ``xy`` (inside ``mask``, ``depth`` from its edge) may remove pixels: those nearer in
    intensity to the clicked spot (its 5 x 5 median) than to the mask's median; None (anywhere) unless the click lies
    deep in the mask (at least half its largest depth: the wrong region reaches no edge; ``anywhere``: at any depth)
    on a spot that differs from the mask by more than the mask's standard deviation (where the spot looks like the
    mask, all of it may be wrong)."""
    from scipy import ndimage

    if np.shape(image)[:2] != mask.shape:
        raise ValueError(f"Image and mask differ in shape: image {np.shape(image)}, mask {mask.shape}.")
    if not anywhere and depth < 0.5 * ndimage.distance_transform_edt(np.pad(mask, 1)).max():
        return None   # near the edge (most negative clicks): the image is not needed
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=-1)
    if window is not None:
        image = np.clip(image, *window)
    x, y = xy
    spot = float(np.median(image[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3]))
    body = image[mask]
    middle = float(np.median(body))
    if abs(spot - middle) <= float(body.std()):
        return None
    return np.abs(image - spot) < np.abs(image - middle)


def _kept_local(previous, new, click, positive, box, earlier) -> np.ndarray:
    """``new`` on the connected part of the change under the click (on the image), within the box and nearer this
    click than any earlier one of the other kind; ``previous`` elsewhere (``local_correction``'s locality rules)."""
    x, y = (int(round(float(v))) for v in click)
    if previous[y, x] == new[y, x]:
        return previous.copy()
    from scipy import ndimage

    changed, _ = ndimage.label(previous != new)
    corrected = np.where(changed == changed[y, x], new, previous)
    if box is not None:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        inside = np.zeros(corrected.shape, bool)
        inside[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
        if inside[y, x]:
            corrected &= inside | previous
    opposing = [xy for xy, sign in earlier if positive is not None and bool(sign) != bool(positive)]
    if opposing:
        rows, cols = np.indices(corrected.shape)
        mine = (cols - float(click[0])) ** 2 + (rows - float(click[1])) ** 2
        theirs = np.min([(cols - float(ex)) ** 2 + (rows - float(ey)) ** 2 for ex, ey in opposing], axis=0)
        corrected = np.where(theirs < mine, previous, corrected)
    return corrected


def content_hash(array, extra: str = "", digest_size: int = 16) -> str:
    """Hex digest of an array's bytes, shape and dtype (and ``extra``): same pixels -> same key. Keys the
    embedding caches (images, volumes, cine frames)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.blake2b(array.view(np.uint8).reshape(-1), digest_size=digest_size)
    digest.update(f"{array.shape}{array.dtype}{extra}".encode())
    return digest.hexdigest()
