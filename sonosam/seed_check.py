"""Is the model's answer on a seed slice what the prompt asked for? If not, say why and offer alternatives.

    from sonosam.seed_check import check_seed
    check = check_seed(predictor, image, box=(x0, y0, x1, y1), key=..., window=...)
    check.problems            # [] when the answer agrees with the prompt, else one line per problem
    check.candidates          # [Candidate(mask, score, source, problems), ...]: the model's answer first
    check.best                # the suggested candidate (0, the model's, unless the answer is clearly wrong)
    preview_index(check.best, box, points)   # the candidate a preview shows (the suggestion, for a box alone)
    Seed(index, mask=check.candidates[i].mask)   # propagate from the one the user picks

A box says where a structure is and how far it reaches: its sides touch the structure. The model's answer
disagrees with that when (docs/volume.md):

- its bounding box covers much less of the box than the box's own evidence suggests (the mask sits in a part of
  the box, e.g. the bright band beside a thin dark ventricle);
- it fills the box, touching all four sides along much of their length (it segmented the box, not a structure);
- the model is unsure (predicted IoU below `min_score`).

An alternative is suggested (`best`) only on two signals together: the model is unsure, and a contrasted
structure that its mask avoids spans the box; or when a part of the box stands out strongly (CSF, air) and either
spans the box clearly better than the model's answer or the model is unsure; or when the model is unsure, its
answer does not stand out from its surroundings, and a part of the box that does lies whole within the box (a
whole brain; `whole_share`). Contrast is measured in the model's window. Every problem is reported and every
alternative offered.

Alternatives: the model's other masks where it has trained multimask heads (SAM ViT-B/L/H); for click-capable
models, the box plus a click deep inside the structure the box's intensities point to; and, model-free, the
darker or brighter part of the box (a threshold between the box's two intensity classes, Otsu's) whose
connected component spans the box best. `structure_candidate` is that last one, also used by the propagation
when the model loses a high-contrast structure (sonosam.volume). Also offered and never suggested
(`three_classes`): the darkest and the brightest of three intensity classes (a box around a large structure holds
it, its surroundings and the background: white matter / grey matter / CSF, bone / soft tissue / air).
With clicks and no box (one click does not say how much of a tissue is meant), also offered and never suggested:
the region the first positive click is in, for the slice's two and three intensity classes (`click_regions`).

Everything here is Qt-free and model-agnostic: the Slicer effect shows `candidates` and lets the user pick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .masks import iou

__all__ = ["Candidate", "SeedCheck", "check_seed", "preview_index", "structure_candidate", "click_regions",
           "box_agreement", "mask_problems", "is_ring", "whole_share"]

MIN_SCORE = 0.7        # below this predicted IoU the answer is flagged as unsure
MIN_SPAN = 0.6         # flagged when the mask's bounding box covers less than this share of the box's area ...
SPAN_MARGIN = 0.25     # ... and an intensity component spans the box better by this much
FILL_SIDES = 0.6       # flagged when the mask runs along more than this share of each of the 4 sides
MIN_CONTRAST = 2.0     # an intensity candidate counts as evidence only when it stands out this much from its
                       # surroundings (contrast_polarity); low-contrast boxes never overrule the model
# a confident switch to the intensity candidate (chosen on the dev structures, between the ventricles' dark part
# and every other dev candidate; docs/volume.md)
SURE_CONTRAST = 4.0    # it stands out at least this much, and the model is unsure (below MIN_SCORE) or it ...
SURE_SPAN = 0.85       # ... spans the box at least this well ...
SURE_MARGIN = 0.1      # ... and better than the model's answer by this much
HOLLOW = 1.5           # a candidate whose holes would add more than half its area is a ring: kept hollow
WHOLE = 0.9            # a part of the box is a whole structure when this share of its whole-slice component lies
                       # within the box grown by WHOLE_MARGIN px (a parcel's runs on into the larger tissue)
WHOLE_MARGIN = 3
SAME_IOU = 0.9         # an alternative this close (IoU) to one already offered is not offered again
MIN_REGION = 20        # px: a click's region smaller than this is not offered (`click_regions`)


@dataclass
class Candidate:
    mask: np.ndarray                    # bool (H, W)
    score: float                        # the model's predicted IoU; nan for a model-free candidate
    source: str                         # what made it, in words
    logits: np.ndarray | None = None    # low-res logits (model candidates), for a mask prompt
    problems: list[str] = field(default_factory=list)
    agreement: float = 0.0              # box_agreement with the prompt's box (1 = spans it exactly)


@dataclass
class SeedCheck:
    candidates: list[Candidate]
    best: int = 0
    polarity: str | None = None   # "dark"/"bright": the contrasted structure in the box that the model's mask avoids
    decision: str = ""            # why `best` is not the model's answer, in words ("" when it is)

    @property
    def problems(self) -> list[str]:
        """What is wrong with the model's own answer (the first candidate); [] when it looks right."""
        return self.candidates[0].problems if self.candidates else ["no answer"]

    @property
    def ok(self) -> bool:
        return not self.problems

    def listing(self, first: int = 0) -> str:
        """The candidates from `first` on as "i: source, ..." (what --seed-choice and the Mask list number)."""
        return ", ".join(f"{i}: {c.source}" for i, c in enumerate(self.candidates) if i >= first)

    def summary(self) -> str:
        if self.ok:
            return "the mask agrees with the prompt"
        alternatives = self.listing(1)
        return "; ".join(self.problems) + (f". Alternatives: {alternatives} (suggested: {self.best})"
                                           if alternatives else "") + (f". {self.decision}" if self.decision else "")


def preview_index(best: int, box, points=None) -> int:
    """Which candidate a preview shows: the check's suggestion (`best`) for a box alone, its first answer before any
    click; else the model's answer (0), and the preview follows the clicks (docs/volume.md, stop 56)."""
    return best if box is not None and (points is None or len(points) == 0) else 0


def _bbox(mask: np.ndarray):
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    return cols[0], rows[0], cols[-1], rows[-1]


def _box_pixels(box, shape):
    height, width = shape
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(width - 1, x1), min(height - 1, y1)
    return x0, y0, x1, y1


def box_agreement(mask: np.ndarray, box) -> float:
    """Area of the mask's bounding box inside the prompt box over the area of their union (0..1): how well the
    mask spans the box (a box drawn around a structure touches it on every side)."""
    bb = _bbox(mask)
    if bb is None:
        return 0.0
    x0, y0, x1, y1 = box
    a0, b0, a1, b1 = bb
    iw = max(0.0, min(x1, a1 + 1) - max(x0, a0))
    ih = max(0.0, min(y1, b1 + 1) - max(y0, b0))
    inter = iw * ih
    union = (x1 - x0) * (y1 - y0) + (a1 + 1 - a0) * (b1 + 1 - b0) - inter
    return float(inter / union) if union > 0 else 0.0


def _fills_box(mask: np.ndarray, box) -> bool:
    x0, y0, x1, y1 = _box_pixels(box, mask.shape)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return False
    # each side: the share of its length where the mask reaches within 2 px of it
    sides = [mask[y0:y1 + 1, x0:x0 + 3].any(axis=1), mask[y0:y1 + 1, max(x1 - 2, 0):x1 + 1].any(axis=1),
             mask[y0:y0 + 3, x0:x1 + 1].any(axis=0), mask[max(y1 - 2, 0):y1 + 1, x0:x1 + 1].any(axis=0)]
    return all(side.mean() > FILL_SIDES for side in sides)


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centres)
    total, total_mean = weight[-1], mean[-1]
    w1 = total - weight
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight / total - mean) ** 2 * total / (weight * w1)
    between[~np.isfinite(between)] = -1
    # two classes with empty bins between them score the same at every threshold in the gap: take its middle
    best = int(np.argmax(between))
    last = best
    while last + 1 < len(between) and between[last + 1] >= between[best] - 1e-9 * abs(between[best]):
        last += 1
    return float((centres[best] + centres[last]) / 2)


def _otsu3(values: np.ndarray, bins: int = 64) -> tuple[float, float]:
    """The two thresholds that split `values` into three classes with the largest between-class variance (Otsu's
    rule for three classes)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    p = hist / max(hist.sum(), 1)
    weight, mean = np.cumsum(p), np.cumsum(p * centres)
    i, j = np.triu_indices(bins - 1, k=1)          # class 0: bins 0..i, class 1: i+1..j, class 2: j+1..
    w0, w1, w2 = weight[i], weight[j] - weight[i], 1.0 - weight[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = mean[i] ** 2 / w0 + (mean[j] - mean[i]) ** 2 / w1 + (mean[-1] - mean[j]) ** 2 / w2
    between[(w0 <= 0) | (w1 <= 0) | (w2 <= 1e-12) | ~np.isfinite(between)] = -1
    best = int(np.argmax(between))
    return float(edges[i[best] + 1]), float(edges[j[best] + 1])


def contrast(image: np.ndarray, mask: np.ndarray) -> float | None:
    """(mean inside - mean of a 3 px ring around it) / SD inside: how far the mask stands out from its
    surroundings (negative: darker); None for a mask under 10 px or without a ring."""
    if mask.sum() < 10:
        return None
    ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
    if not ring.any():
        return None
    image = np.asarray(image, np.float32)
    inside = image[mask]
    return (float(inside.mean()) - float(image[ring].mean())) / max(float(inside.std()), 1e-6)


def contrast_polarity(image: np.ndarray, mask: np.ndarray, min_contrast: float | None = MIN_CONTRAST) -> str | None:
    """"dark" or "bright" when the mask stands out from a 3 px ring around it by at least `min_contrast`
    standard deviations of its own intensities (a ventricle, an air space, bone; grey-matter parcels do not);
    None otherwise. The values per structure are in docs/volume.md."""
    if min_contrast is None:
        return None
    value = contrast(image, mask)
    if value is None or abs(value) < min_contrast:
        return None
    return "dark" if value < 0 else "bright"


def _hull(mask: np.ndarray) -> np.ndarray:
    """The mask's convex hull, filled (the mask itself when its pixels span no area)."""
    from scipy.spatial import ConvexHull

    rows, cols = np.nonzero(mask)
    try:
        hull = ConvexHull(np.stack([cols, rows], 1).astype(float))
    except Exception:  # scipy's QhullError: fewer than 3 points, or all on a line
        return mask.copy()
    y, x = np.indices(mask.shape)
    grid = np.stack([x.ravel(), y.ravel()], 1).astype(float)
    return np.all(grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 0.5, axis=1).reshape(mask.shape)


def is_ring(mask: np.ndarray) -> bool:
    """Filling its holes would add more than half its area (`HOLLOW`): a ring, like the skull on an axial slice."""
    return bool(mask.any()) and ndimage.binary_fill_holes(mask).sum() > HOLLOW * mask.sum()


def _box_crop(image: np.ndarray, box) -> np.ndarray:
    """The box's pixels (float32): what its two intensity classes are split over (Otsu's threshold)."""
    x0, y0, x1, y1 = _box_pixels(box, image.shape)
    return np.asarray(image, np.float32)[y0:y1 + 1, x0:x1 + 1]


def whole_share(image: np.ndarray, part: np.ndarray, box, kind: str, threshold: float) -> float:
    """The share of `part`'s whole-slice component (the pixels on its side of `threshold` over the whole slice,
    the connected components it touches) that lies within `box` grown by WHOLE_MARGIN px: about 1 for a whole
    structure in its box (a brain, a ventricle), small for a piece of a larger tissue (a cortical parcel)."""
    image = np.asarray(image, np.float32)
    side = image < threshold if kind == "dark" else image >= threshold
    labels, _ = ndimage.label(side)
    touched = np.unique(labels[part & side])
    component = np.isin(labels, touched[touched > 0])
    if not component.any():
        return 0.0
    x0, y0, x1, y1 = _box_pixels(box, image.shape)
    m = WHOLE_MARGIN
    inside = component[max(y0 - m, 0):y1 + m + 1, max(x0 - m, 0):x1 + m + 1].sum()
    return float(inside / component.sum())


def structure_candidate(image: np.ndarray, box, *, polarity: str | None = None, near: np.ndarray | None = None,
                        threshold: float | None = None, between: tuple[float, float] | None = None,
                        classes: int = 2) -> tuple[np.ndarray, str] | None:
    """The model-free candidate: inside the box, the darker (or brighter) of the two intensity classes (Otsu
    threshold over the box, or `threshold`), opened 1 px, its connected component that spans the box best less its
    share on the box's outer 2 px and of its border (or, with `near`, overlaps `near` most), leaving out components
    lying mostly on those 2 px. The surroundings a loose box takes in lie along its border; a structure the box was
    drawn around touches the border at a few points at most. polarity "dark"/"bright" fixes the class; None tries both.
    `threshold` replaces the box's Otsu split where that split does not lie `between` the two intensities given
    (a structure's surroundings and its own mean: the split would not separate them), or always (between None).
    classes=3: the darkest (or brightest) of three intensity classes instead (`_otsu3`; `threshold` unused).
    Returns (mask, source) or None when nothing qualifies."""
    x0, y0, x1, y1 = _box_pixels(box, image.shape)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    crop = _box_crop(image, box)
    if crop.max() <= crop.min():
        return None
    if classes == 3:
        splits = dict(zip(("dark", "bright"), _otsu3(crop.ravel())))
    else:
        split = _otsu(crop.ravel())
        if threshold is None or (between is not None and min(between) < split < max(between)):
            threshold = split
        splits = {"dark": threshold, "bright": threshold}
    edge = np.ones(crop.shape, bool)   # the box's outer 2 px: a component lying there is the surroundings
    edge[2:-2, 2:-2] = False
    border = np.ones(crop.shape, bool)  # the box's outer 1 px: the surroundings run along it, a structure does not
    border[1:-1, 1:-1] = False
    border_length = border.sum()
    best = None
    for kind in ([polarity] if polarity else ["dark", "bright"]):
        threshold = splits[kind]
        part = crop < threshold if kind == "dark" else crop >= threshold
        part = ndimage.binary_opening(part)
        labels, count = ndimage.label(part)
        for index in range(1, count + 1):
            component = labels == index
            if component.sum() < 10 or (component & edge).sum() > 0.5 * component.sum():
                continue
            full = np.zeros(image.shape, bool)
            full[y0:y1 + 1, x0:x1 + 1] = component
            if near is not None:
                score = float((full & near).sum()) / max(float((full | near).sum()), 1.0)
            else:  # spans the box, and lies inside it rather than along its edge
                score = box_agreement(full, (x0, y0, x1 + 1, y1 + 1)) - (component & edge).sum() / component.sum() \
                    - (component & border).sum() / border_length
            if best is None or score > best[0]:
                best = (score, full, kind, threshold)
    if best is None or best[0] <= 0:
        return None
    _, mask, kind, threshold = best
    ring = is_ring(mask)  # a ring (a skull in a box around the head): the ring, not its disc
    if classes == 3:
        source = f"the {kind}est{' ring' if ring else ''} of three intensity classes in the box"
    else:
        source = f"the {kind} {'ring in' if ring else 'part of'} the box"
    return (mask if ring else ndimage.binary_fill_holes(mask)), f"{source} (threshold {threshold:.4g})"


def click_regions(image: np.ndarray, click) -> list[tuple[np.ndarray, str]]:
    """The model-free answers to a click (no box): the connected region of the click's intensity class that holds it,
    for the slice's two intensity classes (Otsu) and its three (`_otsu3`); opened 1 px as `structure_candidate`'s
    part (the unopened class where the opening took the click's pixel), holes filled unless a ring. Left out: regions
    under `MIN_REGION` pixels and regions touching the slice's outer pixel (the background around a head or a
    body). One click does not say how much of a tissue is meant; where the structure stands out, its region does.
    `image`: the slice as the model sees it (in its window). Returns [(mask, source)], possibly empty."""
    image = np.asarray(image, dtype=np.float32)
    x, y = (int(round(v)) for v in click)
    if image.ndim != 2 or not (0 <= y < image.shape[0] and 0 <= x < image.shape[1]) or image.max() <= image.min():
        return []
    border = np.ones(image.shape, bool)
    border[1:-1, 1:-1] = False
    regions = []
    for classes, splits in ((2, [_otsu(image.ravel())]), (3, list(_otsu3(image.ravel())))):
        level = np.searchsorted(np.asarray(splits), image, side="right")   # 0: darkest class
        names = ("dark", "bright") if classes == 2 else ("darkest", "middle", "brightest")
        kind = level[y, x]
        same = level == kind
        opened = ndimage.binary_opening(same)
        labels, _ = ndimage.label(opened if opened[y, x] else same)
        region = labels == labels[y, x]
        if region.sum() < MIN_REGION or (region & border).any():
            continue
        ring = is_ring(region)
        regions.append((region if ring else ndimage.binary_fill_holes(region),
                        f"the {names[kind]} {'ring' if ring else 'region'} the click is in "
                        f"({'two' if classes == 2 else 'three'} intensity classes of the slice)"))
    return regions


def mask_problems(mask: np.ndarray, score: float, box, evidence: float | None = None,
                  min_score: float = MIN_SCORE) -> list[str]:
    """Why `mask` (predicted IoU `score`) disagrees with the prompt `box`; evidence: the best box agreement
    of any intensity component (how well the box's own content spans it)."""
    problems = []
    if not mask.any():
        return ["the mask is empty"]
    if box is not None:
        agreement = box_agreement(mask, box)
        if agreement < MIN_SPAN and (evidence is None or evidence >= agreement + SPAN_MARGIN):
            problems.append(f"the mask spans only {agreement:.0%} of the box"
                            + (f" while a {'structure' if evidence else ''} in it spans {evidence:.0%}"
                               if evidence else ""))
        if _fills_box(mask, box):
            problems.append("the mask fills the box (it runs along all four sides)")
    if np.isfinite(score) and score < min_score:
        problems.append(f"the model is unsure (predicted IoU {score:.2f} < {min_score})")
    return problems


def check_seed(predictor, image: np.ndarray, box=None, points=None, labels=None, *, key=None, window=None,
               min_score: float = MIN_SCORE, prefer: str | None = None, contrast_switch: bool = True,
               three_classes: bool = True) -> SeedCheck:
    """Segment the seed slice and check the answer against the prompt; see the module doc.
    predictor: a sonosam Predictor (or anything with its predict() and .model). prefer: "dark"/"bright" when the
    user already took that kind of alternative on another slice of the same structure (a correction then
    follows it even where the model is sure). contrast_switch: an unsure model's answer that does not stand out
    gives way to the part of the box that does, where that part is a whole structure (`whole_share`).
    three_classes: also offer the darkest and the brightest of three intensity classes (never suggested)."""
    # lists or arrays, as any caller gives them (a console user's Seed(points=np.array(...)))
    points = None if points is None or len(points) == 0 else [tuple(float(v) for v in p) for p in points]
    labels = None if labels is None or len(labels) == 0 else [int(v) for v in labels]
    model = getattr(predictor, "model", None)
    spec = getattr(model, "spec", None)
    multimask = bool(getattr(spec, "multimask", False))
    takes_points = "point" in getattr(spec, "prompt_kinds", ())
    image = np.asarray(image)
    pred = predictor.predict(image, points=points, labels=labels, box=box, multimask=multimask, key=key,
                             window=window)
    # contrast as the model and the user see it: in the window (on a CT, raw HU put the clipped tails of air, CSF or
    # dense bone into a structure's spread, so the CT ventricle's dark part stands out less raw than in its window)
    seen = np.clip(image.astype(np.float32), *window) if window is not None else image
    candidates = [Candidate(pred.masks[i], float(pred.scores[i]), "the model's answer" if i == 0 else
                            f"the model's mask #{i + 1}", pred.low_res_logits[i]) for i in range(len(pred.masks))]
    intensity, evidence, polarity = None, None, None
    if box is not None:
        found = structure_candidate(image, box)
        if found is not None:
            intensity = Candidate(found[0], float("nan"), found[1])
            polarity = contrast_polarity(seen, intensity.mask)
            model_mask = candidates[0].mask
            # evidence against the model's answer: a contrasted structure spans the box, and the model's mask
            # lies mostly outside it, on the other side of the intensity threshold (the bright band beside a
            # dark ventricle)
            if polarity is not None and polarity in found[1] and model_mask.any() \
                    and (model_mask & intensity.mask).sum() < 0.5 * model_mask.sum():
                evidence = box_agreement(intensity.mask, box)
    # clicks alone: no "unsure" (a click model's predicted IoU for one click runs low whether it is right or wrong,
    # docs/volume.md); the regions the click is in are offered without a warning
    candidates[0].problems = mask_problems(candidates[0].mask, candidates[0].score, box, evidence,
                                           min_score if box is not None else 0.0)
    if intensity is not None and " ring " in intensity.source:  # the model answered the ring's disc?
        hole = ndimage.binary_fill_holes(intensity.mask) & ~intensity.mask
        if (candidates[0].mask & hole).sum() > 0.5 * hole.sum():
            candidates[0].problems.append(f"the mask fills the hole of {intensity.source.split(' (')[0]}")
    # the model's mask fills what a contrasted structure of the box encloses, hardly touching it (the skull base's bone,
    # open towards the face, around LiteMedSAM's answer; the box's best-spanning class there is the soft tissue):
    # flagged and that structure offered, never taken automatically
    enclosing = None
    model_mask = candidates[0].mask
    flagged = any("fills the hole" in p for p in candidates[0].problems)
    for kind in ("bright", "dark") if box is not None and model_mask.any() and not flagged else ():
        same = intensity is not None and intensity.source.startswith(f"the {kind} ")
        found = (intensity.mask, intensity.source) if same else structure_candidate(image, box, polarity=kind)
        if found is None or contrast_polarity(seen, found[0]) != kind:
            continue
        area = model_mask.sum()
        if (model_mask & _hull(found[0])).sum() >= 0.8 * area and (model_mask & found[0]).sum() <= 0.2 * area \
                and area >= found[0].sum():
            candidates[0].problems.append(f"the mask fills what {found[1].split(' (')[0]} encloses")
            enclosing = None if same else Candidate(found[0], float("nan"), found[1])
            break
    if candidates[0].problems and intensity is not None and takes_points:
        # let the model segment what the box's intensities point to: a click deep inside it
        depth = ndimage.distance_transform_edt(np.pad(intensity.mask, 1))[1:-1, 1:-1]
        row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
        clicked = predictor.predict(image, points=[(float(col), float(row))] + [tuple(p) for p in (points or [])],
                                    labels=[1] + list(labels or []), box=box, multimask=False, key=key,
                                    window=window)
        candidates.append(Candidate(clicked.mask, float(clicked.score),
                                    f"the model with a click inside {intensity.source.split(' (')[0]}",
                                    clicked.logits))
    if intensity is not None:
        candidates.append(intensity)
    if enclosing is not None:
        candidates.append(enclosing)
    # clicks alone: the region the first positive click is in (offered, never suggested; `click_regions`)
    positive = [p for p, label in zip(points or [], labels or [1] * len(points or [])) if label]
    if box is None and positive:
        for mask, source in click_regions(seen, positive[0]):
            if all(iou(mask, c.mask) < SAME_IOU for c in candidates):
                candidates.append(Candidate(mask, float("nan"), source))
    three = []   # offered, never suggested: where the two-class split separates the wrong two of three
    for kind in ("dark", "bright") if three_classes and box is not None else ():
        found = structure_candidate(image, box, polarity=kind, classes=3)
        if found is not None and all(iou(found[0], c.mask) < SAME_IOU for c in candidates + three):
            three.append(Candidate(found[0], float("nan"), found[1]))
    candidates += three
    for c in candidates:
        c.agreement = box_agreement(c.mask, box) if box is not None else float("nan")
        if c is not candidates[0]:
            c.problems = mask_problems(c.mask, c.score, box, None, min_score)
    for c in ([intensity] if intensity is not None and polarity is None else []) + \
            [c for c in three if contrast_polarity(seen, c.mask) is None]:
        c.problems.append("it hardly stands out from its surroundings")
    check = SeedCheck(candidates, polarity=polarity if evidence is not None else None)
    # suggest an alternative only on two signals together: the model is unsure, and a contrasted structure that
    # its mask avoids spans the box (the bright band beside a dark ventricle). Either alone is only reported:
    # on Colin27 a box around the caudate holds a dark, well-spanning piece of ventricle while the model is
    # sure of the caudate, and the model is unsure of the pallidum with no contrasted structure to offer.
    model_answer = candidates[0]
    conflict = evidence is not None and model_answer.agreement < MIN_SPAN and evidence >= model_answer.agreement \
        + SPAN_MARGIN
    unsure = np.isfinite(model_answer.score) and model_answer.score < min_score
    if conflict and (unsure or (prefer is not None and prefer == check.polarity)):
        fine = [i for i, c in enumerate(candidates) if i and not c.problems and c is not enclosing
                and all(c is not t for t in three)]
        if fine:
            check.best = max(fine, key=lambda i: (round(candidates[i].agreement, 2), -i))
            check.decision = f"Took {candidates[check.best].source}: the model is unsure and its mask avoids " \
                             f"the contrasted structure that spans the box" if unsure else \
                f"Took {candidates[check.best].source}: the earlier seeds of this structure took that kind"
    # a confident switch: a structure that stands out strongly (CSF, air) spans the box, and either spans it clearly
    # better than the model's answer (the sagittal ventricle: 90 % against 59 %, even when the model is sure) or the
    # model is unsure (a box a few pixels off no longer lets the ventricle span it that much better)
    if check.best == 0 and intensity is not None and not intensity.problems:
        value = contrast(seen, intensity.mask)
        spans = intensity.agreement >= SURE_SPAN and intensity.agreement >= model_answer.agreement + SURE_MARGIN
        if value is not None and abs(value) >= SURE_CONTRAST and (spans or unsure):
            check.best = next(i for i, c in enumerate(candidates) if c is intensity)
            check.polarity = "dark" if value < 0 else "bright"
            check.decision = (f"Took {intensity.source}: it stands out {abs(value):.1f} SD from its surroundings "
                              + (f"and spans the box ({intensity.agreement:.0%}) better than the model's answer "
                                 f"({model_answer.agreement:.0%})" if spans else
                                 f"and the model is unsure (predicted IoU {model_answer.score:.2f})"))
            if not model_answer.problems:
                model_answer.problems.append(f"{intensity.source.split(' (')[0]} spans the box better "
                                             f"({intensity.agreement:.0%} against {model_answer.agreement:.0%})")
    # a large whole structure the model is unsure of (a whole brain): its answer blends into the surroundings, while
    # the part of the box that stands out is the structure. Not where that part runs on out of the box: then it is a
    # piece of a larger tissue (a cortical parcel, one hemisphere's white matter) and the model may well be right
    if contrast_switch and check.best == 0 and unsure and intensity is not None and not intensity.problems \
            and intensity.agreement >= model_answer.agreement:
        answer, value = contrast(seen, model_answer.mask), contrast(seen, intensity.mask)
        kind = "dark" if intensity.source.startswith("the dark") else "bright"
        if (answer is None or abs(answer) < MIN_CONTRAST) and value is not None \
                and whole_share(image, intensity.mask, box, kind, _otsu(_box_crop(image, box).ravel())) >= WHOLE:
            check.best = next(i for i, c in enumerate(candidates) if c is intensity)
            check.polarity = "dark" if value < 0 else "bright"
            check.decision = (f"Took {intensity.source}: the model is unsure (predicted IoU {model_answer.score:.2f})"
                              f" and its answer does not stand out from its surroundings, while this part does "
                              f"({abs(value):.1f} SD) and lies whole within the box")
    return check
