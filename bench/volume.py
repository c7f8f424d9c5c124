"""Propagation accuracy for every shape of structure, on MRI and CT, against model-free references.

    python -m bench.volume [--subjects colin27 ct_head inia19 icbm152] [--structures NAME ...] [--cache runs/cache]
                                   [--corrections 3] [--seed-pick auto|user|correct|route|route-suggested]
                                   [--assist-after 3] [--json out.json [--overwrite]]

Subjects and references: `sonosam.references` (Colin27 T1 MRI: AAL structures, lateral ventricles, white
matter; the invesalius head CT: skull, mandible rami, airway, sinuses, brain; on request, `--subjects inia19`, the
INIA19 macaque template: NeuroMaps structures and the whole brain; `--subjects icbm152`, the MNI ICBM152 template:
lateral ventricles, white matter per hemisphere, the whole brain). For each structure, along its
axis: one slightly loose seed box (the reference's bounding box + 2 px) on the slice where the reference is
largest; propagation both ways; then up to `corrections` corrections, each on the slice with the most
wrong pixels so far, where the simulated user looks at what the tool offers (`corrective_choices`: clicks for
click-capable models, the box, the seed check's alternatives), takes the best, and accepts it only if it beats
what the slice holds (else the correction is spent and nothing changes); or, where the front overran a true end
by more wrong voxels than any slice inside holds, the first slice past that end erased (an empty accepted mask,
which bounds the front); and a local re-run (`previous=`) after each. Reported: true and
propagated extent, 3D Dice from one prompt and after 1/2/3 corrections, the naive baseline (the seed box on
every slice of the structure and 10 beyond each end), the seed check's verdict, and seconds per decoded slice with a warm cache. Embeddings are
computed once and kept on disk (`--cache`, fp16, `sonosam.train.cache.EmbeddingStore`), so a re-run of the
table is decode-only. `--json` records the rows with the run's settings (subjects, structures, `--option`
overrides, the commit); an existing file is kept unless `--overwrite`, and a `--structures` name in none of the
subjects is refused before the model loads.

`--seed-pick user`: where the seed check reports a problem, the simulated user picks the offered mask closest to the
reference (what the Slicer effect's Mask list lets a user do), reported apart from the one-prompt figures.
`--seed-pick correct`: the simulated user corrects the seed slice before anything propagates, taking the best answer
that slice offers (the choices a correction has, below) where it beats the checked seed (`corrected_seed`): one
correction spent on the seed slice instead of the worst slice.
`--seed-pick route`: the seed is the box's preview as the Slicer effect shows it and the user accepts it before
propagating (`route_seed`: `interactive_predictor`, the model's box scales and box-session decoder), not the
propagation's own answer to the box. `--seed-pick route-suggested`: the same, the preview switched to the seed check's
suggestion where it makes one (the check through the same route; docs/volume.md, stop 56's experiment).
Corrective clicks keep each click's change local to it, as the Slicer effect shows them (`--whole-corrections`:
the model's whole new answer, as the figures before 2026-12-03 were measured).
`--box-shifts PX`: each row also from 6 more seed boxes (grown, shrunk, moved left / right / up / down by PX pixels),
one prompt each: the mean over the 7 boxes is the figure a one-box row cannot give (some rows swing from 0.03 to 0.7
with a 3 px change; docs/volume.md).
`--ends [N]`: the simulated user also gives each structure's first and last slice (`PropagationOptions.span`), N
slices further out each way (default 0: the true ends), with every prompt from the seed box on (the Slicer effect's
"between two slices").
`--seed-prompt click` (click-capable models): the first prompt is one positive click at the centre of the structure
on the seed slice (`centroid_click`) instead of the box, as `sonosam propagate --point` takes it; the corrections
are as above.
`--assist-after N`: after N corrections, SAM^assist learned from the held slices and the propagation re-run with and
without it (row["assist"]).

DEV rows (left-hemisphere MRI structures; since 2026-12-03 evening also the head CT's lateral ventricles) are where
the rules are chosen; HELD-OUT rows (right hemisphere: a weak hold-out, mirror images; the rest of the CT: another
subject, another modality, a real one; every INIA19 row: another subject and species; every ICBM152 row: another
human brain, an average of 152) are only run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from sonosam.cli import int_at_least
from sonosam.errors import SonoSAMError
from sonosam.evaluate.clicks import centroid_click
from sonosam.evaluate.metrics import dice
from sonosam.io import Volume
from sonosam.references import SUBJECTS, Subject, load_subject
from sonosam.volume import AXES, PropagationOptions, Seed, naive_baseline, propagate, slice_of, volume_window

# the structures the rules are chosen on (every shape, left hemisphere; the CT's ventricles, so that a rule for CT
# need not be tuned on held-out rows; the MRI's whole brain, a large structure with dark pockets like the CT's
# brain); everything else is held out
DEV = ("Lateral_Ventricle_L", "White_Matter_L", "Thalamus_L", "Putamen_L", "Caudate_L", "Hippocampus_L",
       "Pallidum_L", "Amygdala_L", "Lateral_Ventricle_a", "Lateral_Ventricle_b", "Brain_MRI")
# CT intensity windows (Slicer's CT-brain preset for the brain and its ventricles; one wide window for bone and air)
CT_BRAIN = (0.0, 100.0)
CT_WINDOWS = {"Brain": CT_BRAIN, "Lateral_Ventricle_a": CT_BRAIN, "Lateral_Ventricle_b": CT_BRAIN}
CT_WIDE = (-1000.0, 1000.0)
NAIVE_REACH = 10  # the naive baseline prompts the structure's slices and this many beyond each end
MARGIN = 2  # px added to each side of a reference's bounding box: a slightly loose box
AXIS_NAME = {index: name for name, index in AXES.items()}   # 0 -> "k" (axial), as the tables name them


def label_seed(labels: np.ndarray, label: int, axis: int = 0) -> tuple[int, tuple[int, int, int, int]]:
    """The slice where `label` is largest along `axis`, and the label's bounding box there (x0, y0, x1, y1)."""
    mask = labels == label
    if not mask.any():
        raise ValueError(f"Label {label} is not in the label map.")
    other = tuple(a for a in range(3) if a != axis)
    index = int(np.argmax(mask.sum(axis=other)))
    return index, label_box(labels, label, index, axis)


def true_extent(mask: np.ndarray, axis: int = 0) -> tuple[int, int]:
    other = tuple(a for a in range(3) if a != axis)
    filled = np.nonzero(mask.any(axis=other))[0]
    return int(filled[0]), int(filled[-1])


def label_box(labels: np.ndarray, label: int, index: int, axis: int = 0) -> tuple[int, int, int, int]:
    """The label's bounding box (x0, y0, x1, y1) on slice `index` along `axis`."""
    rows, cols = np.nonzero(np.take(labels == label, index, axis=axis))
    if rows.size == 0:
        raise ValueError(f"Label {label} is not on slice {index}.")
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def loose_box(mask2d: np.ndarray, margin: int = MARGIN) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask2d)
    height, width = mask2d.shape
    return (float(max(0, cols.min() - margin)), float(max(0, rows.min() - margin)),
            float(min(width - 1, cols.max() + margin)), float(min(height - 1, rows.max() + margin)))


def moved_boxes(box, shift: int, shape: tuple[int, int]) -> list[tuple[float, float, float, float]]:
    """The box grown and shrunk by ``shift`` px on every side, and moved by it left, right, up and down (inside
    the slice of ``shape`` (rows, columns)): how much a row's figure hangs on the exact box a user draws."""
    x0, y0, x1, y1 = box
    moves = [(-shift, -shift, shift, shift), (shift, shift, -shift, -shift), (-shift, 0, -shift, 0),
             (shift, 0, shift, 0), (0, -shift, 0, -shift), (0, shift, 0, shift)]
    return [(float(np.clip(x0 + a, 0, shape[1] - 1)), float(np.clip(y0 + b, 0, shape[0] - 1)),
             float(np.clip(x1 + c, 0, shape[1] - 1)), float(np.clip(y1 + d, 0, shape[0] - 1)))
            for a, b, c, d in moves]


def warm_from_store(predictor, store, volume: np.ndarray, axis: int, window, volume_id: str,
                    indices=None) -> int:
    """Put the disk store's embeddings of the volume's slices into the predictor's cache under the keys that
    `propagate` asks for (encoding and storing what is missing); returns how many were encoded."""
    from sonosam.models import Embedding

    before = store.encoder_calls
    for index in (range(volume.shape[axis]) if indices is None else indices):
        image = slice_of(volume, axis, index)
        if image.min() == image.max():
            continue
        key = (predictor.model.model_id, (volume_id, axis, index), tuple(window))
        if key in predictor.cache:
            continue
        cached = store.get(image, tuple(window))
        features = cached.features[None].to(predictor.model.device)
        predictor.cache.put(key, Embedding(features, cached.original_size, cached.input_size,
                                           predictor.model.model_id))
    return store.encoder_calls - before


def _correction(pred: np.ndarray, gt: np.ndarray, axis: int, taken: set[int]) -> tuple[int, bool] | None:
    """Where a user would correct next, and how: (slice, True) to erase the first slice past a true end that the
    front overran (an empty accepted mask: it bounds the front), when the overrun holds more wrong voxels than
    any one slice inside; else (slice, False): a box on the slice inside the structure with the most wrong
    pixels. None when nothing is wrong."""
    other = tuple(a for a in range(3) if a != axis)
    wrong = (pred ^ gt).sum(axis=other).astype(float)
    first, last = true_extent(gt, axis)
    inside = wrong.copy()
    inside[:first] = inside[last + 1:] = -1
    for index in taken:
        inside[index] = -1
    options = [(float(inside.max()), int(np.argmax(inside)), False)]
    if first - 1 >= 0 and first - 1 not in taken:
        options.append((float(wrong[:first].sum()), first - 1, True))
    if last + 1 < len(wrong) and last + 1 not in taken:
        options.append((float(wrong[last + 1:].sum()), last + 1, True))
    amount, index, erase = max(options)
    return (index, erase) if amount > 0 else None


def corrective_choices(predictor, image: np.ndarray, gt: np.ndarray, *, key, window, max_clicks: int = 3,
                       good: float = 0.9, local: bool = True, current: np.ndarray | None = None,
                       three_classes: bool = PropagationOptions.seed_three_classes) -> list[tuple[np.ndarray, str]]:
    """What the simulated user sees when correcting one slice: (mask, how) answers to choose from.

    Every model: a slightly loose box and the seed check's alternatives (what the Slicer effect offers). Click-
    capable models (litemedsam_clicks, SAM) also: clicks alone, and the box with clicks: a positive click deep inside
    the structure (clicks alone) or none (with the box), then clicks in the largest error region of the model's
    answer (sonosam.evaluate.clicks, the click protocol's user), up to `max_clicks` clicks, stopping at slice Dice
    `good`; every answer is a choice. `local`: each click's answer kept local to it (sonosam.masks.local_correction),
    as the Slicer effect shows it; else the model's whole new answer. `current` (an experiment, `--refine-clicks`):
    also clicks that correct the slice's own mask locally, the model given a positive click at that mask's centre
    first (not shown) and then the corrective clicks."""
    from sonosam.evaluate.clicks import centroid_click, next_click
    from sonosam.masks import local_correction
    from sonosam.seed_check import check_seed

    def answer(clicks, box, mask):   # the model's answer to the clicks (and box), local to the last one if asked
        pred = predictor.predict(image, points=[c.xy for c in clicks], labels=[c.label for c in clicks], box=box,
                                 key=key, window=window)
        if not local or mask is None:
            return pred.mask
        last = clicks[-1]   # alone: the last click by itself, if the model ignored it
        return local_correction(mask, pred.mask, last.xy, positive=last.positive, alone=lambda: predictor.predict(
            image, points=[last.xy], labels=[1], key=key, window=window).mask, box=box,
            earlier=[(c.xy, c.positive) for c in clicks[:-1]], image=image, window=window)

    box = loose_box(gt)
    check = check_seed(predictor, image, box=box, key=key, window=window, three_classes=three_classes)
    choices = [(c.mask, f"box: {c.source}") for c in check.candidates]
    if "point" not in predictor.model.spec.prompt_kinds:
        return choices
    for start_box in (None, box):
        clicks = [] if start_box is not None else [centroid_click(gt)]
        mask = check.candidates[0].mask if start_box is not None else None
        while len(clicks) < max_clicks:
            if mask is not None:
                if dice(mask, gt) >= good or next_click(mask, gt) is None:
                    break
                clicks.append(next_click(mask, gt))
            mask = answer(clicks, start_box, mask)
            choices.append((mask, f"{'box + ' if start_box is not None else ''}{len(clicks)} "
                                  f"click{'s' if len(clicks) > 1 else ''}"))
    if local and current is not None and current.any():
        mask, clicks = current, [centroid_click(current)]
        while len(clicks) <= max_clicks and dice(mask, gt) < good and next_click(mask, gt) is not None:
            clicks.append(next_click(mask, gt))
            mask = answer(clicks, None, mask)
            choices.append((mask, f"{len(clicks) - 1} click{'s' if len(clicks) > 2 else ''} on the slice's mask"))
    return choices


def user_seed(predictor, image: np.ndarray, truth: np.ndarray, box, *, key, window,
              three_classes: bool = PropagationOptions.seed_three_classes, click=None) -> tuple[Seed | None, str]:
    """"The user picks the seed from the offered masks": where the seed check reports a problem (the Slicer effect
    then shows its Mask list), the simulated user takes the offered candidate closest to the reference (Dice) and
    propagates from it as an accepted mask, as the effect does; (None, "") when the check finds nothing wrong or the
    pick is what the check suggests anyway (the box seed propagates as in the one-prompt figures). `click` (x, y) in
    place of the box: the seed check of that click alone, and the user looks at the list whenever it holds an
    alternative (the effect shows it whenever it does; its regions come with no warning)."""
    from sonosam.seed_check import check_seed

    if click is not None:
        check = check_seed(predictor, image, points=[click], labels=[1], key=key, window=window)
    else:
        check = check_seed(predictor, image, box=box, key=key, window=window, three_classes=three_classes)
    if check.ok and (click is None or len(check.candidates) == 1):
        return None, ""
    picked = max(range(len(check.candidates)), key=lambda i: dice(check.candidates[i].mask, truth))
    if picked == check.best:
        return None, ""
    return Seed(0, mask=check.candidates[picked].mask), check.candidates[picked].source


def route_seed(predictor, image: np.ndarray, box, *, key, window, suggested: bool = False) -> tuple[Seed, str]:
    """"The user accepts the box's preview" (the Slicer effect: a box, then Propagate): the mask the user's route
    answers the box with (`interactive_predictor`: the model's box scales, its box-session decoder where it has one),
    propagated from as an accepted mask. suggested: the preview is the seed check's suggestion where it makes one (the
    check through the same route)."""
    from sonosam.prompts import Prompts
    from sonosam.zoom import interactive_predictor

    route = interactive_predictor(predictor)
    if suggested:
        from sonosam.seed_check import check_seed, preview_index

        check = check_seed(route, image, box=box, key=key, window=window)
        index = preview_index(check.best, box)
        if index:
            return Seed(0, mask=check.candidates[index].mask), f"the box's preview: {check.decision}"
    answer = route.predict(image, Prompts(box=box), key=key, window=window)
    return Seed(0, mask=answer.mask), "the box's preview"


def corrected_seed(predictor, image: np.ndarray, truth: np.ndarray, box, *, key, window, local: bool = True,
                   three_classes: bool = PropagationOptions.seed_three_classes, click=None) -> tuple[Seed | None, str]:
    """"The user corrects the seed slice before propagating" (the Slicer effect: clicks on the seed slice, then
    Propagate): the simulated user takes the best answer the seed slice offers (`corrective_choices`: the box, the
    seed check's alternatives and, for click-capable models, up to 3 clicks alone or after the box) where it beats
    what the seed check would propagate from the box (or the `click`), and propagates from it as an accepted mask;
    (None, "") when nothing offered beats it."""
    from sonosam.seed_check import check_seed

    prompt = {"box": box} if click is None else {"points": [click], "labels": [1]}
    check = check_seed(predictor, image, key=key, window=window, three_classes=three_classes, **prompt)
    now = dice(check.candidates[check.best].mask, truth)
    mask, how = max(corrective_choices(predictor, image, truth, key=key, window=window, local=local,
                                       three_classes=three_classes), key=lambda c: dice(c[0], truth))
    if dice(mask, truth) <= now:
        return None, ""
    return Seed(0, mask=mask), f"{how} ({now:.2f} -> {dice(mask, truth):.2f})"


def _assisted_rerun(predictor, volume, result, axis, window, volume_id, kinds, **options) -> dict | None:
    """SAM^Med's prompt-encoder learning in the correction loop: learn an assisted prompt encoder from the slices
    the user holds (the seed's mask and the accepted corrections; sonosam.assist.learn_assist, the product's
    defaults), then propagate again from those same anchors (all as accepted masks) with it and, for a fair
    comparison, with the base model. None when fewer than 2 non-empty slices are held."""
    from sonosam.assist import learn_assist

    held = sorted(result.anchors)
    seeds = [Seed(i, mask=result.slice_mask(i).copy()) for i in held]
    filled = [i for i in held if result.slice_mask(i).any()]
    if len(filled) < 2:
        return None
    if len(filled) > 5:  # learn_assist takes 2-5: evenly spread
        filled = [filled[int(round(j))] for j in np.linspace(0, len(filled) - 1, 5)]
    assisted = learn_assist(predictor, np.moveaxis(volume, axis, 0), filled,
                            [result.slice_mask(i) for i in filled], window=window,
                            key=lambda i: (volume_id, axis, i), kinds=kinds)
    base = propagate(predictor, volume, seeds, axis=axis, window=window, volume_id=volume_id, **options)
    learned = propagate(assisted, volume, seeds, axis=axis, window=window, volume_id=volume_id, **options)
    # the learned prompt encoder with the base's prompts (boxes only): what the learned box embedding alone does, when
    # a box-only base (LiteMedSAM) gains points with it
    boxes = propagate(assisted, volume, seeds, axis=axis, window=window, volume_id=volume_id,
                      **{**options, "n_points": 0}) if "point" not in predictor.model.spec.prompt_kinds else learned
    return {"slices": filled, "train_seconds": assisted.result.seconds, "base_rerun": base, "assisted_rerun": learned,
            "assisted_boxes_rerun": boxes}


def evaluate_structure(predictor, volume, gt, axis=0, window=None, volume_id=None, corrections: int = 3,
                       naive: bool = True, seed_pick: str = "auto", assist_after=(),
                       assist_kinds=("box", "point"), local_corrections: bool = True, refine_clicks: bool = False,
                       box_shifts: int = 0, seed_at: float | None = None, seed_prompt: str = "box",
                       **options) -> dict:
    """One structure: seed box on its widest slice (``seed_at`` F: on the slice at F of the way through its true
    extent instead, or the nearest that holds it), propagation, corrections, naive baseline; see module doc.
    seed_pick "user": the simulated user picks the seed from the offered masks (`user_seed`); assist_after:
    after these correction counts (e.g. (2, 3)), also learn SAM^assist from the held slices and re-run
    (`_assisted_rerun`): row["assist"]. box_shifts > 0: also one prompt from the seed box grown, shrunk and moved
    by that many pixels each way (`moved_boxes`), each with the seed check's automatic pick: row["dice_boxes"] (the
    seed box's first, then the 6 others). seed_prompt "click": one positive click on the seed slice's reference
    (`centroid_click`: its centroid, or its deepest pixel where the centroid falls outside) instead of the box, for
    models that take points."""
    if seed_prompt not in ("box", "click"):
        raise ValueError(f"seed_prompt must be 'box' or 'click', not {seed_prompt!r}.")
    if seed_prompt == "click" and "point" not in predictor.model.spec.prompt_kinds:
        raise ValueError(f"{predictor.model.spec.name} takes no clicks: seed it with a box, or bench a click-capable "
                         "model (litemedsam_clicks).")
    if seed_prompt == "click" and box_shifts:
        raise ValueError("box_shifts moves the seed box: use it with a box seed.")
    window = tuple(window or volume_window(volume))
    three_classes = options.get("seed_three_classes", PropagationOptions.seed_three_classes)  # offered to the user
    other = tuple(a for a in range(3) if a != axis)
    areas = gt.sum(axis=other)
    if seed_at is None:
        index = int(np.argmax(areas))
    else:   # a user need not seed where the structure is widest
        if not 0 <= seed_at <= 1:
            raise ValueError(f"seed_at must be a fraction of the structure's extent (0..1), not {seed_at!r}.")
        held = np.flatnonzero(areas)
        index = int(held[np.argmin(np.abs(held - (held[0] + seed_at * (held[-1] - held[0]))))])
    box = loose_box(slice_of(gt, axis, index))
    click = centroid_click(slice_of(gt, axis, index)).xy if seed_prompt == "click" else None
    seed, picked = (Seed(index, box=box) if click is None else Seed(index, points=[click], labels=[1])), ""
    if seed_pick == "user":
        chosen, picked = user_seed(predictor, slice_of(volume, axis, index), slice_of(gt, axis, index), box,
                                   key=(volume_id, axis, index), window=window, three_classes=three_classes,
                                   click=click)
        if chosen is not None:
            seed = replace(chosen, index=index)
    elif seed_pick == "correct":
        chosen, picked = corrected_seed(predictor, slice_of(volume, axis, index), slice_of(gt, axis, index), box,
                                        key=(volume_id, axis, index), window=window, local=local_corrections,
                                        three_classes=three_classes, click=click)
        if chosen is not None:
            seed = replace(chosen, index=index)
    elif seed_pick in ("route", "route-suggested"):
        if click is not None:
            raise ValueError(f"seed_pick {seed_pick!r} accepts the box's preview: use it with a box seed.")
        chosen, picked = route_seed(predictor, slice_of(volume, axis, index), box, key=(volume_id, axis, index),
                                    window=window, suggested=seed_pick == "route-suggested")
        seed = replace(chosen, index=index)
    elif seed_pick != "auto":
        raise ValueError(f"seed_pick must be 'auto', 'user', 'correct', 'route' or 'route-suggested', not "
                         f"{seed_pick!r}.")
    started = time.perf_counter()
    result = propagate(predictor, volume, [seed], axis=axis, window=window, volume_id=volume_id, **options)
    seconds, decoded = time.perf_counter() - started, result.decoded
    check = result.seed_checks.get(index)
    first, last = true_extent(gt, axis)
    extent = result.extent() or (index, index)
    row = {"axis": axis, "seed_slice": index, "box": list(box), "true_extent": [first, last],
           "seed_prompt": seed_prompt, "click": None if click is None else list(click),
           "extent": list(extent), "stop_error": [extent[0] - first, extent[1] - last],
           "dice": dice(result.mask, gt), "seed_dice": dice(result.slice_mask(index), slice_of(gt, axis, index)),
           "seed_check": check.summary() if check is not None else "", "seed_pick": seed_pick,
           "seed_choice": (f"user: {picked}" if picked else result.slices[index].candidate),
           "summary": result.summary(),
           "intensity_slices": sum(s.candidate == "intensity" for s in result.slices.values())}
    if box_shifts:
        height, width = slice_of(gt, axis, index).shape
        row["dice_boxes"] = [row["dice"]] + [
            dice(propagate(predictor, volume, [Seed(index, box=moved)], axis=axis, window=window, volume_id=volume_id,
                           **options).mask, gt) for moved in moved_boxes(box, box_shifts, (height, width))]
    curve, taken = [row["dice"]], {index}
    kinds = []
    assist = {}

    def learn(spent):  # SAM^assist from the held slices after `spent` corrections (row["assist"])
        if spent not in assist_after:
            return
        out = _assisted_rerun(predictor, volume, result, axis, window, volume_id, assist_kinds, **options)
        assist[spent] = None if out is None else {
            "slices": out["slices"], "train_seconds": out["train_seconds"], "dice_local": curve[-1],
            "dice_base_rerun": dice(out["base_rerun"].mask, gt), "dice_assisted_rerun": dice(out["assisted_rerun"].mask, gt),
            "dice_assisted_boxes_rerun": dice(out["assisted_boxes_rerun"].mask, gt)}

    for spent in range(1, corrections + 1):
        found = _correction(result.mask, gt, axis, taken)
        if found is None:
            curve.append(curve[-1])
            learn(spent)
            continue
        worst, erase = found
        taken.add(worst)
        truth = slice_of(gt, axis, worst)
        if erase or not truth.any():  # past an end, or a gap inside the extent: the user erases the slice
            kinds.append(f"erase {worst}")
            seed = Seed(worst, mask=np.zeros_like(truth))
        else:  # the user takes the best answer they are shown, and only if it beats what the slice holds now
            now = dice(result.slice_mask(worst), truth) if truth.any() else 0.0
            choices = corrective_choices(predictor, slice_of(volume, axis, worst), truth, key=(volume_id, axis, worst),
                                         window=window, local=local_corrections,
                                         current=result.slice_mask(worst) if refine_clicks else None,
                                         three_classes=three_classes)
            mask, how = max(choices, key=lambda c: dice(c[0], truth))
            if dice(mask, truth) <= now:
                kinds.append(f"{worst}: nothing better offered ({how})")
                curve.append(curve[-1])
                learn(spent)
                continue
            kinds.append(f"{worst}: {how} ({now:.2f} -> {dice(mask, truth):.2f})")
            seed = Seed(worst, mask=mask)
        started = time.perf_counter()
        result = propagate(predictor, volume, [seed], axis=axis, window=window, volume_id=volume_id,
                           previous=result, **options)
        seconds += time.perf_counter() - started
        decoded += result.decoded
        curve.append(dice(result.mask, gt))
        learn(spent)
    row["dice_after"] = curve[1:]
    if assist_after:
        row["assist"] = {str(k): v for k, v in assist.items()}
    row["corrections"] = kinds
    row["seconds_per_slice"] = seconds / max(decoded, 1)
    if naive:
        reach = range(max(0, first - NAIVE_REACH), min(volume.shape[axis], last + NAIVE_REACH + 1))
        baseline = naive_baseline(predictor, volume, box, axis=axis, window=window, volume_id=volume_id,
                                  indices=reach)
        row["dice_naive"] = dice(baseline, gt)
        oracle = np.zeros_like(baseline)
        where = [slice(None)] * 3
        where[axis] = slice(first, last + 1)
        oracle[tuple(where)] = baseline[tuple(where)]
        row["dice_naive_true_extent"] = dice(oracle, gt)
    return row


DEV_SUBJECTS = ("colin27", "ct_head")   # DEV names rows of these; other subjects are held out whole


def thicken(array: np.ndarray, group: int, axis: int = 0) -> np.ndarray:
    """`array` with every `group` consecutive slices along `axis` averaged into one (float32); a last partial group
    is dropped. A mask thickened this way holds the share of each thick slice it fills."""
    kept = array.shape[axis] // group * group
    array = np.moveaxis(np.moveaxis(array, axis, 0)[:kept].astype(np.float32), 0, axis)
    shape = list(array.shape)
    shape[axis:axis + 1] = [kept // group, group]
    return array.reshape(shape).mean(axis=axis + 1)


def slices_per_group(spacing: float, mm: float) -> int:
    """How many slices of `spacing` mm make one slice about `mm` thick."""
    return max(1, round(mm / spacing))


def thick_slices(subject, mm: float, axis: int = 0):
    """The subject as a thick-slice acquisition along `axis` (clinical CT and MRI are often 3-7 mm; every subject
    here but the lesion scans is 0.5-1.5 mm): groups of round(mm / spacing) consecutive slices averaged into one (the
    partial volume of a thick slice), each reference kept where it fills at least half of a group; a last partial
    group is dropped. Returns (subject, slices per group)."""
    spacing = subject.volume.geometry.spacing[2 - axis]   # geometry is (i, j, k); array axis 0 is k
    group = slices_per_group(spacing, mm)
    spacing3 = list(subject.volume.geometry.spacing)
    spacing3[2 - axis] = spacing * group
    geometry = replace(subject.volume.geometry, spacing=tuple(spacing3))
    thick = Subject(subject.name, subject.modality, Volume(thicken(subject.volume.array, group, axis), geometry))
    for name, ref in subject.references.items():
        mask = thicken(ref.mask, group, axis) >= 0.5
        if mask.any():
            thick.add(name, mask, ref.shape, f"{ref.how}; in {group}-slice thick slices, where it fills half")
    return thick, group


def bench(subjects=("colin27", "ct_head"), structures=None, axis: int = 0, cache: str = "runs/cache",
          corrections: int = 3, naive: bool = True, model_name: str = "litemedsam", backend: str | None = "auto",
          verbose: bool = True, seed_pick: str = "auto", assist_after=(), assist_kinds=("box", "point"),
          local_corrections: bool = True, refine_clicks: bool = False, box_shifts: int = 0,
          ends: int | None = None, seed_at: float | None = None, thick: float | None = None, seed_prompt: str = "box",
          **options) -> dict:
    import torch

    from sonosam.models import load_model
    from sonosam.predictor import Predictor
    from sonosam.train.cache import EmbeddingStore

    from sonosam.evaluate.report import code_version

    say = print if verbose else (lambda *a, **k: None)
    loaded = []   # every subject first: a structure name that is in none of them is refused before the model loads
    for subject_name in subjects:
        subject, group = load_subject(subject_name), 1
        if thick:
            subject, group = thick_slices(subject, thick, axis)
        loaded.append((subject_name, subject, group))
    unknown = [n for n in structures or () if not any(n in subject.references for _, subject, _ in loaded)]
    if unknown:
        known = sorted({n for _, subject, _ in loaded for n in subject.references})
        raise SonoSAMError(f"--structures {' '.join(unknown)}: in none of the subjects {', '.join(subjects)}; "
                           f"their structures: {', '.join(known)}.")
    model = load_model(model_name, backend=backend)
    store = EmbeddingStore(cache, model, memory=False)
    out = {"model": model.spec.name, "backend": model.backend, "threads": torch.get_num_threads(), "axis": axis,
           "subjects": list(subjects), "structures": list(structures) if structures else None,
           "corrections": corrections, "naive": naive, "options": dict(options), "code": code_version(),
           "seed_pick": seed_pick, "assist_after": list(assist_after), "local_corrections": local_corrections,
           "refine_clicks": refine_clicks, "box_shifts": box_shifts, "ends": ends, "seed_at": seed_at,
           "thick": thick, "seed_prompt": seed_prompt, "rows": []}
    for subject_name, subject, group in loaded:
        volume = subject.volume.array
        names = [n for n in structures if n in subject.references] if structures else list(subject.references)
        for name in names:  # in the order asked for
            ref = subject.references[name]
            if subject.modality == "CT":
                window = CT_WINDOWS.get(name, CT_WIDE)
            else:
                window = volume_window(volume)
            predictor = Predictor(model, cache_mib=2048)
            volume_id = f"{subject_name}-{window}" + (f"-thick{group}x{axis}" if group > 1 else "")
            started = time.perf_counter()
            first, last = true_extent(ref.mask, axis)
            reach = range(max(0, first - NAIVE_REACH), min(volume.shape[axis], last + NAIVE_REACH + 1))
            encoded = warm_from_store(predictor, store, volume, axis, window, volume_id, reach)
            row = evaluate_structure(predictor, volume, ref.mask, axis, window, volume_id, corrections, naive,
                                     seed_pick=seed_pick, assist_after=assist_after, assist_kinds=assist_kinds,
                                     local_corrections=local_corrections, refine_clicks=refine_clicks,
                                     box_shifts=box_shifts, seed_at=seed_at, seed_prompt=seed_prompt,
                                     **(options if ends is None else
                                        {**options, "span": (max(first - ends, 0),
                                                             min(last + ends, volume.shape[axis] - 1))}))
            row.update(subject=subject_name, modality=subject.modality, name=name, shape=ref.shape,
                       set="dev" if subject_name in DEV_SUBJECTS and name in DEV else "held-out",
                       window=list(window), encoded=encoded, slices_per_thick_slice=group,
                       wall_seconds=time.perf_counter() - started)
            predictor.close()
            out["rows"].append(row)
            say(f"{subject_name}/{name} ({ref.shape}, {row['set']}): Dice {row['dice']:.3f} -> "
                + " ".join(f"{d:.3f}" for d in row["dice_after"])
                + (f" naive {row['dice_naive']:.3f}" if naive else "")
                + f"; seed {row['seed_dice']:.3f} ({row['seed_choice']}); extent {row['extent']} true "
                  f"{row['true_extent']}; {row['seconds_per_slice'] * 1000:.0f} ms/slice; {row['summary']}"
                + (f"; seed check: {row['seed_check']}" if row["seed_check"] else "")
                + (f"; corrections: {', '.join(row['corrections'])}" if row["corrections"] else "")
                + (f"; one prompt from 7 boxes: mean {np.mean(row['dice_boxes']):.3f}, "
                   + " ".join(f"{d:.3f}" for d in row["dice_boxes"]) if "dice_boxes" in row else "")
                + "".join(f"; SAM^assist after {k}: " + ("fewer than 2 slices held" if a is None else
                          f"slices {a['slices']} ({a['train_seconds']:.0f} s) Dice local {a['dice_local']:.3f}, "
                          f"re-run base {a['dice_base_rerun']:.3f}, assisted {a['dice_assisted_rerun']:.3f} "
                          f"(boxes only {a['dice_assisted_boxes_rerun']:.3f})")
                          for k, a in row.get("assist", {}).items()), flush=True)
    return out


def format_table(result: dict) -> str:
    """The rows as docs/volume.md shows them; "7 boxes" is the one-prompt mean over the seed box and its 6 moves
    (``--box-shifts``), where the run made them."""
    lines = ["| subject | axis | structure | shape | set | true extent | propagated | Dice, 1 prompt | 7 boxes | +1 | "
             "+2 | +3 | naive | seed Dice (choice) | ms/slice |", "|---" * 15 + "|"]
    for r in result["rows"]:
        after = (r["dice_after"] + [float("nan")] * 3)[:3]
        boxes = f"{np.mean(r['dice_boxes']):.3f}" if "dice_boxes" in r else "-"
        lines.append(f"| {r['subject']} | {AXIS_NAME[r['axis']]} | {r['name']} | {r['shape']} | {r['set']} | "
                     f"{r['true_extent'][0]}..{r['true_extent'][1]} | {r['extent'][0]}..{r['extent'][1]} | "
                     f"**{r['dice']:.3f}** | {boxes} | " + " | ".join(f"{d:.3f}" for d in after) + " | "
                     f"{r.get('dice_naive', float('nan')):.3f} | {r['seed_dice']:.3f} ({r['seed_choice']}) | "
                     f"{r['seconds_per_slice'] * 1000:.0f} |")
    return "\n".join(lines)


def goals(result: dict) -> str:
    """The issue's goals over the rows: mean 3D Dice >= 0.75 from one prompt, none < 0.5, >= 0.85 after <= 3
    corrections; per set."""
    lines = []
    for which in ("dev", "held-out", "all"):
        rows = [r for r in result["rows"] if which == "all" or r["set"] == which]
        if not rows:
            continue
        one = np.array([r["dice"] for r in rows])
        best = np.array([max([r["dice"]] + r["dice_after"]) for r in rows])
        last = np.array([r["dice_after"][-1] if r["dice_after"] else r["dice"] for r in rows])
        lines.append(f"{which} ({len(rows)}): mean Dice from one prompt {one.mean():.3f} (goal 0.75), "
                     f"{int((one < 0.5).sum())} below 0.5 (goal 0), min {one.min():.3f}; after 3 corrections mean "
                     f"{last.mean():.3f} (goal 0.85), {int((last >= 0.85).sum())}/{len(rows)} at >= 0.85; "
                     f"best of 0-3 mean {best.mean():.3f}"
                     + (f"; one prompt over 7 boxes: mean {np.mean([np.mean(r['dice_boxes']) for r in rows]):.3f}"
                        if all("dice_boxes" in r for r in rows) else ""))
    return "\n".join(lines)


def parse_options(items) -> dict:
    """["NAME=VALUE", ...] (`--option`) as PropagationOptions keywords: JSON values, None, True/False."""
    from dataclasses import fields

    names = {f.name for f in fields(PropagationOptions)}
    options = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in names:
            raise SystemExit(f"--option {item!r}: {key!r} is not a PropagationOptions field; choose from "
                             f"{', '.join(sorted(names))}")
        try:
            options[key] = None if value == "None" else json.loads(value.lower() if value in ("True", "False")
                                                                    else value)
        except json.JSONDecodeError:
            raise SystemExit(f"--option {item!r}: expected NAME=VALUE with a number, None, True/False or JSON "
                             "(e.g. min_similarity=0.8)") from None
    return options


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", nargs="+", default=["colin27", "ct_head"], choices=SUBJECTS)
    parser.add_argument("--structures", nargs="+", help="reference names (default: all)")
    parser.add_argument("--cache", default="runs/cache", help="folder of the on-disk embedding cache")
    parser.add_argument("--axis", type=int, default=0, choices=[0, 1, 2], help="slicing axis (0: k, axial)")
    parser.add_argument("--corrections", type=int_at_least(0), default=3)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--backend", default="auto", help="inference backend (sonosam.models.backends)")
    parser.add_argument("--threads", type=int_at_least(1), help="torch threads (default: torch's choice)")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a PropagationOptions override, e.g. min_contrast=None (repeatable)")
    parser.add_argument("--seed-pick", choices=["auto", "user", "correct", "route", "route-suggested"],
                        default="auto",
                        help="auto: the seed check's suggestion (the one-prompt figures); user: where the check "
                             "reports a problem, the simulated user picks the offered mask closest to the reference; "
                             "correct: the user corrects the seed slice first (the best answer it offers, clicks "
                             "included); route: the box's preview as the Slicer effect shows it, accepted; "
                             "route-suggested: the same, the seed check's suggestion where it makes one")
    parser.add_argument("--assist-after", type=int_at_least(0), nargs="*", default=[],
                        help="after these correction counts, learn SAM^assist from the held slices and re-run")
    parser.add_argument("--assist-kinds", nargs="+", default=["box", "point"], choices=["box", "point"])
    parser.add_argument("--whole-corrections", dest="local_corrections", action="store_false",
                        help="a correcting click's whole new answer (SAM's protocol; the figures before 2026-12-03) "
                             "instead of its change kept local to it, as the Slicer effect shows it")
    parser.add_argument("--refine-clicks", action="store_true",
                        help="experiment: the simulated user may also click to correct the slice's own propagated "
                             "mask locally (corrective_choices' `current`)")
    parser.add_argument("--box-shifts", type=int_at_least(0), default=0, metavar="PX",
                        help="also propagate from the seed box grown, shrunk and moved by PX pixels (6 more one-prompt "
                             "runs per row): the spread says how much a row hangs on the exact box")
    parser.add_argument("--ends", type=int_at_least(0), nargs="?", const=0, metavar="SLICES",
                        help="the simulated user also gives each structure's first and last slice (the core's "
                             "`span`), SLICES further out each way (default 0: exactly), with every prompt: 'a box "
                             "and the ends' instead of 'a box'")
    parser.add_argument("--seed-at", type=float, metavar="F",
                        help="seed on the slice F (0..1) of the way through the structure's extent, not its widest")
    parser.add_argument("--seed-prompt", choices=["box", "click"], default="box",
                        help="the first prompt: the loose box (default) or one positive click at the seed slice's "
                             "structure centre, for click-capable models")
    parser.add_argument("--thick", type=float, metavar="MM",
                        help="bench the subjects as thick-slice acquisitions along --axis: consecutive slices averaged "
                             "into slices about MM thick (`thick_slices`)")
    parser.add_argument("--json", help="write the results here (with the run's settings and commit)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--table", nargs="+", metavar="JSON",
                        help="only print the table and goals of earlier runs' --json files, taken together")
    args = parser.parse_args(argv)
    if args.seed_at is not None and not 0 <= args.seed_at <= 1:
        parser.error(f"--seed-at {args.seed_at}: give a fraction of the structure's extent, 0 to 1 (0.25: a quarter "
                     "of the way in)")
    if args.seed_prompt == "click" and args.box_shifts:
        parser.error("--box-shifts moves the seed box: use it with --seed-prompt box")
    if args.table:
        rows = []
        for path in args.table:
            try:
                rows += json.loads(Path(path).read_text())["rows"]
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise SystemExit(f"--table {path}: not a bench.volume --json file ({error!r})") from None
        print(format_table({"rows": rows}))
        print(goals({"rows": rows}))
        return 0
    options = parse_options(args.option)
    from sonosam.io.atomic import check_output_path, write_text

    try:
        if args.json:   # before the run, not after it
            check_output_path(args.json, args.overwrite, parents=True)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        result = bench(args.subjects, args.structures, axis=args.axis, cache=args.cache, corrections=args.corrections,
                   naive=not args.no_naive, model_name=args.model, backend=args.backend, seed_pick=args.seed_pick,
                   assist_after=tuple(args.assist_after), assist_kinds=tuple(args.assist_kinds),
                   local_corrections=args.local_corrections, refine_clicks=args.refine_clicks,
                   box_shifts=args.box_shifts, ends=args.ends, seed_at=args.seed_at, thick=args.thick,
                   seed_prompt=args.seed_prompt, **options)
    except SonoSAMError as error:
        raise SystemExit(f"error: {error}") from None
    print(format_table(result))
    print(goals(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(result, indent=1) + "\n", overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
