"""The slice decoder (issue 16): LiteMedSAM's prompt encoder + mask decoder trained to continue a carried mask on
the next slice, the way volume propagation asks it to; shipped as ``litemedsam_slices``, propagation's carrier for
``litemedsam_clicks`` (``PropagationOptions.carrier``; figures and the rules it passed: docs/volume.md).

Propagation's masks decay slice by slice: a box-prompted decoder sees each slice afresh, so a structure whose
borders the image barely shows (AAL nuclei in T1) loses a little at every step. This decoder is also given the
previous slice's mask as SAM's mask prompt, and is trained on exactly the prompt propagation makes
(``sonosam.volume.next_slice_prompt``: box around the intensity-consistent part of the previous mask, clicks deep
inside it, the mask itself), from a neighbouring slice's reference mask that is randomly eroded, dilated or shifted
so that it looks like a previous prediction. The other batches (``--propagate-share``) are ordinary click/box
starts, and each batch may add corrective clicks, so the decoder still takes a box and a user's corrections. With
``--rollout-share`` a share of the batches carry the structure several slices on from the decoder's own answers
(``_rollout``), the masks propagation really feeds it, whose errors a perturbed reference does not imitate.

Data (``training_labels``): Colin27 T1 (Debian ``mricron-data``) along all three axes, every AAL structure **except**
the structures of propagation's test set (``sonosam.references.COLIN27_AAL``, both sides), plus model-free tissue
that is not in that test set (the cerebellum's white matter; CSF away from the lateral ventricles), and with
``--union-share`` the AAL lobes per side (``unions``: large structures): the bench rows stay held out by structure,
the head CT by volume and modality. Target slices are every 3rd slice; slabs of 12
(``slab_part``: "val") are the validation part. The shipped decoder took two runs:

    python -m sonosam.train.slice_decoder --out runs/slices --minutes 30 --threads 1
    python -m sonosam.train.slice_decoder --init runs/slices/decoder.json --out runs/slices_v2 --minutes 20 \
        --propagate-share 0.5 --point-start 0.4 --lr 1e-4 --threads 2

Each writes ``OUT/decoder.pth`` (+ ``.json``), a decoder checkpoint declared for points, boxes and masks; try one as
the carrier with ``propagate(..., carrier="OUT/decoder.json")`` or ``python -m bench.volume --option
carrier='"OUT/decoder.json"'``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..masks import bounding_box, dice
from .click_data import _colin27_arrays, slab_part
from .data import COLIN27_AAL_RANGES
from .engine import PromptDecoder, full_res_mask, iterate_prompts, low_res_target
from .losses import hard_dice, prompt_loss
from .prompts import PromptSampler

__all__ = ["SlicePair", "colin27_pairs", "excluded_labels", "training_labels", "unions", "perturb", "propagation_start",
           "main"]

NAME = "litemedsam_slices"
OFFSETS = (-2, -1, 1, 2)                                  # neighbour slices a mask is carried from
CEREBELLAR_WM, FIRST_CSF = 200, 201                       # training_labels' model-free tissue
FIRST_UNION = 300                                         # large structures: unions of AAL labels (``unions``)
# AAL's lobes (odd values left, the next even one right), none of them holding a propagation test structure
LOBES = {"frontal": range(1, 29), "cingulate_parahippocampal": (31, 32, 33, 34, 35, 36, 39, 40),
         "occipital": range(43, 57), "parietal": range(57, 71), "temporal": range(79, 91), "cerebellum": range(91, 109)}


@dataclass(frozen=True)
class SlicePair:
    axis: int
    index: int      # the target slice
    offset: int     # the previous slice is index + offset
    label: int


def excluded_labels() -> set[int]:
    """AAL values of propagation's test structures (both sides): never trained on."""
    from ..references import COLIN27_AAL

    values = {value for value, _ in COLIN27_AAL.values()}
    return values | {v + 1 if v % 2 else v - 1 for v in values}   # AAL: odd = left, the next even = right


@lru_cache(maxsize=1)
def training_labels() -> np.ndarray:
    """The label map trained on, on the Colin27 grid: every AAL structure but ``excluded_labels``, plus model-free
    tissue that is not in the bench (``sonosam.references`` thresholds): ``CEREBELLAR_WM`` the cerebellum's white
    matter (bright), and from ``FIRST_CSF`` on each 3D component of at least 300 voxels of the CSF outside the
    lateral ventricles and more than 3 voxels from them (dark: cisterns, 3rd / 4th ventricle, sulci)."""
    from ..references import CSF_MAX, WM_MIN, colin27_brain_mask, colin27_references

    t1, aal = _colin27_arrays()
    labels = np.where(np.isin(aal, sorted(excluded_labels())), 0, aal)
    refs = colin27_references(aal=False).references
    brain = colin27_brain_mask()
    ventricles = ndimage.binary_dilation(refs["Lateral_Ventricle_L"].mask | refs["Lateral_Ventricle_R"].mask,
                                         iterations=3)
    labels[(t1 >= WM_MIN) & brain & np.isin(aal, np.arange(91, 117))] = CEREBELLAR_WM
    parts, count = ndimage.label((t1 < CSF_MAX) & brain & ~ventricles)
    sizes = np.bincount(parts.ravel())
    for value, index in enumerate([i for i in range(1, count + 1) if sizes[i] >= 300]):
        labels[parts == index] = FIRST_CSF + value
    return labels


@lru_cache(maxsize=1)
def unions() -> dict[int, tuple[int, ...]]:
    """Large structures to train on, as label value (from ``FIRST_UNION``) -> the AAL values they join: each lobe of
    ``LOBES`` per side (40-220k voxels; a hemisphere's white matter, which the bench holds out, is 280k). No bench
    structure is in them; as with the single AAL labels trained on, AAL's generous parcels take in white matter near
    the cortex (59 % of White_Matter_L's voxels lie in AAL labels trained on, with or without the lobes)."""
    out: dict[int, tuple[int, ...]] = {}
    for side in (1, 0):   # left: odd AAL values, right: even
        for values in LOBES.values():
            out[FIRST_UNION + len(out)] = tuple(v for v in values if v % 2 == side)
    assert not set(v for g in out.values() for v in g) & excluded_labels()
    return out


def _union_areas(aal_slice: np.ndarray) -> dict[int, int]:
    areas = np.bincount(aal_slice.ravel(), minlength=256)
    return {value: int(areas[list(members)].sum()) for value, members in unions().items()}


def colin27_pairs(stride: int = 3, min_area: int = 60, lobes: bool = False) -> dict[str, list[SlicePair]]:
    """Training and validation pairs: (target slice, neighbour, label of ``training_labels``, or with ``lobes`` also
    of ``unions``) where the neighbour holds at least ``min_area`` pixels of it (the target may hold fewer, or none:
    a structure's end)."""
    labelled, aal = training_labels(), _colin27_arrays()[1]
    parts: dict[str, list[SlicePair]] = {"train": [], "val": []}
    for axis, (lo, hi) in COLIN27_AAL_RANGES.items():
        labels, raw = np.moveaxis(labelled, axis, 0), np.moveaxis(aal, axis, 0)
        for index in range(lo, hi + 1, stride):
            part = "val" if slab_part(index) == "val" else "train"
            for offset in OFFSETS:
                areas = np.bincount(labels[index + offset].ravel(), minlength=int(labelled.max()) + 1)
                found = [int(label) for label in np.flatnonzero(areas >= min_area) if label]
                if lobes:
                    found += [value for value, area in _union_areas(raw[index + offset]).items() if area >= min_area]
                parts[part] += [SlicePair(axis, index, offset, label) for label in found]
    return parts


def perturb(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A reference mask made to look like a previous prediction: eroded or dilated by 1-2 px (half the time),
    shifted by up to 2 px (a third of the time); never emptied."""
    out = mask
    if rng.random() < 0.5:
        steps = int(rng.integers(1, 3))
        out = ndimage.binary_dilation(out, iterations=steps) if rng.random() < 0.5 else \
            ndimage.binary_erosion(out, iterations=steps)
    if rng.random() < 1 / 3:
        out = np.roll(out, tuple(int(v) for v in rng.integers(-2, 3, size=2)), axis=(0, 1))
    return out if out.any() else mask


def propagation_start(prev_image, image, prev_mask, options=None):
    """The prompt propagation gives ``image`` after ``prev_image`` held ``prev_mask`` (box, clicks, mask logits)."""
    from ..volume import PropagationOptions, next_slice_prompt

    prompts, _ = next_slice_prompt(prev_image.astype(np.float32), image.astype(np.float32), prev_mask,
                                   bounding_box(prev_mask), options or PropagationOptions(), points=True, mask=True)
    return prompts


class _Pairs:
    """Arrays of the pairs, made on demand (the masks of every pair would not fit in memory)."""

    def __init__(self, model, store):
        from ..image import volume_window

        t1, aal = _colin27_arrays()[:2]
        self.t1, self.labels, self.aal, self.window = t1, training_labels(), aal, volume_window(t1)
        self.model, self.store = model, store

    def slice(self, axis, index):
        return np.ascontiguousarray(np.moveaxis(self.t1, axis, 0)[index])

    def mask(self, axis, index, label):
        if label >= FIRST_UNION:
            return np.isin(np.moveaxis(self.aal, axis, 0)[index], unions()[label])
        return np.moveaxis(self.labels, axis, 0)[index] == label

    def features(self, pair: SlicePair) -> torch.Tensor:
        return self.store.get(self.slice(pair.axis, pair.index), self.window).features

    def sizes(self, pair):
        from .cache import input_size_for

        shape = self.slice(pair.axis, pair.index).shape
        return shape, input_size_for(shape, self.model.spec.image_size)


def _batch(pairs: _Pairs, batch: list[SlicePair], rng, propagate: bool, sampler: PromptSampler):
    """(pairs, target masks, sizes, first prompts, first mask prompts, carried masks) of one batch: propagation
    starts from each pair's perturbed neighbour mask (carried), or (``propagate`` False) click/box starts on the
    target (no mask prompts or carried masks: None)."""
    gts = [pairs.mask(p.axis, p.index, p.label) for p in batch]
    sizes = [pairs.sizes(p) for p in batch]
    if not propagate:
        keep = [i for i, g in enumerate(gts) if g.any()]   # a click start needs a structure on the slice
        batch, gts, sizes = [batch[i] for i in keep], [gts[i] for i in keep], [sizes[i] for i in keep]
        return batch, gts, sizes, [sampler.start(g) for g in gts], None, None
    starts, masks, carried = [], [], []
    for p in batch:
        prev = perturb(pairs.mask(p.axis, p.index + p.offset, p.label), rng)
        prompts = propagation_start(pairs.slice(p.axis, p.index + p.offset), pairs.slice(p.axis, p.index), prev)
        starts.append(prompts)
        masks.append(torch.from_numpy(np.array(prompts.mask_logits))[None])
        carried.append(prev)
    return batch, gts, sizes, starts, torch.stack(masks), carried


def _run(net, model, pairs, prepared, sampler, n_iterations, device, optimizer=None, mask: bool = True,
         answers: dict | None = None):
    """One prepared batch (``_batch``) through the prompt loop; trains when ``optimizer`` is given; ``mask=False``
    leaves out the first mask prompt. Returns the hard Dice of iteration 0 per sample (in the order
    the prompt loop answers them); ``answers`` (a dict) gets iteration 0's mask of each sample, by its place in the
    batch, at the slice's own size."""
    batch, gts, sizes, starts, first, _ = prepared
    if not batch:
        return []
    image_size = model.spec.image_size
    features = torch.stack([pairs.features(p) for p in batch]).to(device)
    targets = torch.stack([low_res_target(g, s[1], image_size) for g, s in zip(gts, sizes)]).to(device)
    first_dice: list[float] = []

    def forward(indices, tensors, mask_in):
        return net(features[indices], tensors.points, tensors.boxes, mask_in)

    def on_output(iteration, indices, logits, iou, final=False, prompts=None):
        if iteration == 0:
            first_dice.extend(hard_dice(logits.detach(), targets[indices]).tolist())
            if answers is not None:
                answers.update({i: full_res_mask(logits[k].detach(), sizes[i][1], sizes[i][0], image_size)
                                for k, i in enumerate(indices)})
        if optimizer is not None:
            (prompt_loss(logits, iou, targets[indices]).sum() / (len(batch) * n_iterations)).backward()

    with torch.set_grad_enabled(optimizer is not None):
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        iterate_prompts(forward, gts, sizes, sampler, model.transform, image_size, n_iterations, device, on_output,
                        starts=starts, first_masks=first.to(device) if (first is not None and mask) else None)
        if optimizer is not None:
            optimizer.step()
    return first_dice


def _rollout(net, model, pairs, batch: list[SlicePair], rng, sampler, steps: int, device, optimizer=None,
             allowed=lambda axis, index: True) -> list[float]:
    """Carry each pair's structure ``steps`` slices on from its perturbed neighbour mask, one slice a step (away
    from the neighbour), each step prompted by ``next_slice_prompt`` from the decoder's **own** previous answer, kept
    as propagation keeps it (the parts touching the previous mask). Every step is graded against its slice's
    reference and, with ``optimizer``, trained (one optimizer step per step; no gradient through the carried mask).
    A sample's rollout ends on an empty answer or a slice ``allowed(axis, index)`` refuses. Returns the Dice of every
    step taken (full resolution)."""
    from ..volume import keep_touching

    carried = [(p, p.index + p.offset, perturb(pairs.mask(p.axis, p.index + p.offset, p.label), rng)) for p in batch]
    dices: list[float] = []
    for _ in range(steps):
        live, step_pairs, gts, starts = [], [], [], []
        for k, (p, previous, prev_mask) in enumerate(carried):
            target = previous - int(np.sign(p.offset))
            if prev_mask is None or not allowed(p.axis, target):
                continue
            live.append(k)
            step_pairs.append(SlicePair(p.axis, target, previous - target, p.label))
            gts.append(pairs.mask(p.axis, target, p.label))
            starts.append(propagation_start(pairs.slice(p.axis, previous), pairs.slice(p.axis, target), prev_mask))
        if not live:
            break
        first = torch.stack([torch.from_numpy(np.array(s.mask_logits))[None] for s in starts])
        answers: dict[int, np.ndarray] = {}
        _run(net, model, pairs, (step_pairs, gts, [pairs.sizes(p) for p in step_pairs], starts, first, None),
             sampler, 1, device, optimizer, answers=answers)
        for j, k in enumerate(live):
            answer, gt, (p, _, prev_mask) = answers[j], gts[j], carried[k]
            dices.append(dice(answer, gt))
            carried[k] = (p, step_pairs[j].index, keep_touching(answer, prev_mask) if answer.any() else None)
    return dices


def validate_rollout(net, model, pairs, val: list[SlicePair], device, steps: int = 6) -> float:
    """Mean Dice over ``steps``-slice rollouts (``_rollout``) from the validation pairs (fixed perturbations): how
    well the decoder carries a structure on its own answers, as propagation runs it."""
    rng, sampler, dices = np.random.default_rng(1234), PromptSampler(0), []
    net.eval()
    with torch.no_grad():
        for start in range(0, len(val), 16):
            dices += _rollout(net, model, pairs, val[start:start + 16], rng, sampler, steps, device)
    net.train()
    return float(np.mean(dices))


def carried_dice(pairs, val: list[SlicePair]) -> float:
    """Mean Dice of the perturbed neighbour masks themselves on ``val`` (the same draws as ``validate``): what
    carrying the mask unchanged would score, the bar a propagation step has to beat."""
    rng, sampler, dices = np.random.default_rng(1234), PromptSampler(0), []
    for start in range(0, len(val), 16):
        _, gts, _, _, _, carried = _batch(pairs, val[start:start + 16], rng, True, sampler)
        dices += [2 * (m & g).sum() / max(m.sum() + g.sum(), 1) for m, g in zip(carried, gts)]
    return float(np.mean(dices))


def validate(net, model, pairs, val: list[SlicePair], device, mask: bool = True) -> float:
    """Mean Dice of one propagation step on ``val`` (fixed perturbations); ``mask=False``: without the mask
    prompt (what propagation gives a decoder not trained with masks)."""
    rng, sampler, dices = np.random.default_rng(1234), PromptSampler(0), []
    net.eval()
    for start in range(0, len(val), 16):
        prepared = _batch(pairs, val[start:start + 16], rng, True, sampler)
        dices += _run(net, model, pairs, prepared, sampler, 1, device, mask=mask)
    net.train()
    return float(np.mean(dices))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sonosam.train.slice_decoder", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/slices")
    parser.add_argument("--cache", default="runs/cache")
    parser.add_argument("--init", default="litemedsam_clicks", help="model whose decoder training starts from")
    parser.add_argument("--minutes", type=float, default=25.0, help="training wall time")
    parser.add_argument("--steps-per-check", type=int, default=20, help="batches between validation checks")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--propagate-share", type=float, default=0.6, help="share of batches with a propagation start")
    parser.add_argument("--point-start", type=float, default=0.6, help="share of click (not box) starts in the others")
    parser.add_argument("--max-corrections", type=int, default=2)
    parser.add_argument("--tissue-share", type=float, default=0.2, help="share of draws from the model-free tissue")
    parser.add_argument("--union-share", type=float, default=0.0, help="share of draws from the lobes (``unions``)")
    parser.add_argument("--rollout-share", type=float, default=0.0,
                        help="share of batches that carry the structure on the decoder's own answers (``_rollout``); "
                             "when > 0, checkpoints are chosen by the validation rollouts' Dice")
    parser.add_argument("--rollout-steps", type=int, default=4, help="slices a training rollout carries a structure")
    parser.add_argument("--val", type=int, default=160, help="validation pairs (evenly spaced, fixed)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ..models import load_model
    from .cache import EmbeddingStore
    from .checkpoint import save_checkpoint
    from .click_decoder import gentle_mask_init
    from .finetune import clickable, trainable_parameters

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.init, backend="eager")
    store = EmbeddingStore(args.cache, model)
    pairs = _Pairs(model, store)
    parts = colin27_pairs(lobes=args.union_share > 0)
    val = parts["val"][::max(1, len(parts["val"]) // args.val)][:args.val]
    train = parts["train"]
    targets = {(p.axis, p.index) for p in train} | {(p.axis, p.index) for p in val}
    print(f"pairs: train {len(train)}, val {len(val)} (of {len(parts['val'])}); target slices {len(targets)}",
          flush=True)
    store.precompute([pairs.slice(a, i) for a, i in sorted(targets)], pairs.window)

    device = torch.device("cpu")
    net = PromptDecoder(model.sam.prompt_encoder, model.sam.mask_decoder).to(device)
    baseline = {"carried mask, unchanged": carried_dice(pairs, val),
                "with mask, before training": validate(net, model, pairs, val, device),
                "without mask (the --init decoder as propagation runs it)": validate(net, model, pairs, val, device,
                                                                                    mask=False)}
    ranges = {axis: (lo - 2, hi + 2) for axis, (lo, hi) in COLIN27_AAL_RANGES.items()}   # every slice encoded below

    def trainable(axis, index):   # a training rollout stays on encoded slices and never enters a validation slab
        return ranges[axis][0] <= index <= ranges[axis][1] and slab_part(index) != "val"

    def score(net):
        return validate_rollout(net, model, pairs, val, device) if args.rollout_share else \
            validate(net, model, pairs, val, device)

    if args.rollout_share:
        store.precompute([pairs.slice(a, i) for a, (lo, hi) in ranges.items() for i in range(lo, hi + 1)],
                         pairs.window)
        baseline["rollouts of 6 slices, before training"] = score(net)
    print("validation, one propagation step:", json.dumps(baseline), flush=True)
    init = "as --init trained it" if "mask" in model.spec.prompt_kinds else gentle_mask_init(model.sam.prompt_encoder)
    optimizer = torch.optim.Adam(trainable_parameters(model.sam), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    sampler = PromptSampler(rng, point_start=args.point_start)
    # AAL structures, tissue and lobes, each drawn at its share (--tissue-share, --union-share); the AAL ones get the rest
    kind = np.array([2 if p.label >= FIRST_UNION else 1 if p.label >= CEREBELLAR_WM else 0 for p in train])
    shares = np.array([1 - args.tissue_share - args.union_share, args.tissue_share, args.union_share])
    draw = shares[kind] / np.maximum(np.bincount(kind, minlength=3), 1)[kind]
    draw /= draw.sum()
    history, best, began, steps = [], -1.0, time.perf_counter(), 0
    while time.perf_counter() - began < args.minutes * 60:
        dices = []
        for _ in range(args.steps_per_check):
            batch = [train[i] for i in rng.choice(len(train), args.batch_size, replace=False, p=draw)]
            if rng.random() < args.rollout_share:
                dices += _rollout(net, model, pairs, batch, rng, sampler, args.rollout_steps, device, optimizer,
                                  allowed=trainable)
                steps += 1
                continue
            propagate = bool(rng.random() < args.propagate_share)
            n_iterations = 1 + int(rng.integers(0, args.max_corrections + 1))
            dices += _run(net, model, pairs, _batch(pairs, batch, rng, propagate, sampler), sampler, n_iterations,
                          device, optimizer)
            steps += 1
        value = score(net)
        history.append({"steps": steps, "seconds": round(time.perf_counter() - began), "train_dice@first": float(np.mean(dices)),
                        "val": value})
        print(json.dumps(history[-1]), flush=True)
        if value > best:
            best = value
            save_checkpoint(clickable(model, mask=True), out / "decoder.pth", name=NAME, kind="slice_decoder", weights="decoder",
                            dtype="float16", description=(
                                "LiteMedSAM with a prompt encoder + mask decoder trained to carry a structure from "
                                "one slice to the next (previous mask as mask prompt) and for clicks and boxes "
                                "(sonosam.train.slice_decoder, Colin27 AAL structures outside the propagation test "
                                "set); points, boxes, masks"),
                            training={"args": vars(args), "mask_init": init,
                                      "data": {"train_pairs": len(train), "val_pairs": len(val),
                                               "excluded_labels": sorted(excluded_labels()),
                                               "unions": {str(k): list(v) for k, v in unions().items()}
                                               if args.union_share else {}},
                                      "baseline": baseline, "history": history, "best_val": best})
    print(f"best validation Dice ({'rollouts' if args.rollout_share else 'one propagation step'}): {best:.3f} "
          f"(baseline {json.dumps(baseline)}); {steps} steps in {time.perf_counter() - began:.0f} s -> "
          f"{out / 'decoder.pth'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
