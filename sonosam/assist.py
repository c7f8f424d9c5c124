"""SAM^assist (SAM^Med): learn only the prompt encoder from 2-5 annotated slices of the volume being
segmented, in seconds on CPU, then segment its other slices with the same kinds of prompts.

The image encoder and mask decoder stay frozen and are *shared* with the base model (no copy); the
prompt encoder is a copy, so the base model is untouched. Training prompts: a box whose sides move by
a uniform [-d_in, d_out] x the box's size (outward positive), or a click near the centroid; then 0..N
composite corrections (clicks in the false-negative / false-positive regions of the current prediction).

    assisted = train_assist(model, images, masks)        # AssistResult: .model, .seconds, .losses
    assisted.model.decode(assisted.model.encode(image), Prompts(box=...))   # or Predictor(assisted.model)
    save_assist(assisted, "liver_assist.pth")           # loads with load_model("liver_assist.pth")

Figures: docs/seeds.md (python -m bench.seeds assist)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from .errors import InputImageError, SonoSAMError
from .evaluate.clicks import box_from_mask
from .models import SamModel
from .predictor import Predictor
from .prompts import PromptKind

__all__ = ["AssistResult", "train_assist", "save_assist", "assisted_model", "AssistedPredictor", "learn_assist",
           "check_slices", "check_kinds", "check_masks"]

MAX_SLICES = 5   # SAM^assist learns from 2..MAX_SLICES annotated slices


def check_slices(slices) -> list[int]:
    """The annotated slices' indices: 2-5 different ones (the command line, the server and learn_assist)."""
    slices = [int(i) for i in slices]
    if not 2 <= len(slices) <= MAX_SLICES or len(set(slices)) != len(slices):
        raise SonoSAMError(f"SAM^assist learns from 2-{MAX_SLICES} different annotated slices; got {slices}.")
    return slices


def check_masks(images, masks) -> None:
    """Each mask on its image's grid (rows, cols): a transposed or resized mask would train on misplaced targets."""
    for n, (image, mask) in enumerate(zip(images, masks)):
        shape, want = np.shape(mask), np.shape(image)[:2]
        if shape != want:
            raise InputImageError(f"Mask {n} is {shape} (rows, cols) but its image is {want}: give each mask on its "
                                  "image's grid.")


def check_kinds(kinds) -> tuple[str, ...]:
    """The prompt kinds to learn: 'box' and/or 'point' (a tuple, or one kind as a string)."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = set(kinds) - {"box", "point"}
    if bad or not kinds:
        raise SonoSAMError(f"kinds must be 'box' and/or 'point', not {sorted(bad) or 'nothing'}.")
    return kinds


@dataclass
class AssistResult:
    model: SamModel                 # the base model with the learned prompt encoder
    seconds: float                  # training time (the slices' encoding excluded)
    encode_seconds: float
    losses: list[float] = field(default_factory=list)
    trained_parameters: int = 0
    config: dict = field(default_factory=dict)
    cpu_seconds: float = 0.0        # CPU time of the training (all threads): ~ its wall time on a quiet 1-thread CPU
    snapshots: dict = field(default_factory=dict)   # step -> assisted SamModel, for the steps asked for


def assisted_model(base: SamModel, prompt_encoder: torch.nn.Module, kinds=("box", "point")) -> SamModel:
    """A SamModel sharing ``base``'s image encoder and mask decoder, with its own prompt encoder."""
    from segment_anything.modeling import Sam

    sam = Sam(image_encoder=base.sam.image_encoder, prompt_encoder=prompt_encoder, mask_decoder=base.sam.mask_decoder,
              pixel_mean=base.sam.pixel_mean.flatten().tolist(), pixel_std=base.sam.pixel_std.flatten().tolist())
    spec = replace(base.spec, name=f"{base.spec.name}+assist", prompt_kinds=frozenset(PromptKind(k) for k in set(base.spec.prompt_kinds) | set(kinds)),
                   base_model=base.spec.base_model or base.spec.name,
                   description=f"{base.spec.name} with a SAM^assist prompt encoder")
    model = SamModel(spec, sam.eval().to(base.device), base.checkpoint)
    model.model_id = base.model_id  # same image encoder: the base model's embeddings (and caches) stay valid
    return model


def _box(mask: np.ndarray, rng: np.random.Generator, d_in: float, d_out: float) -> tuple[float, ...]:
    """Tight box with each side moved outward by U(-d_in, d_out) x the box's width/height."""
    x0, y0, x1, y1 = box_from_mask(mask)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    dx0, dx1 = rng.uniform(-d_in, d_out, 2) * w
    dy0, dy1 = rng.uniform(-d_in, d_out, 2) * h
    height, width = mask.shape
    x0, x1 = np.clip(x0 - dx0, 0, width - 1), np.clip(x1 + dx1, 0, width - 1)
    y0, y1 = np.clip(y0 - dy0, 0, height - 1), np.clip(y1 + dy1, 0, height - 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return tuple(float(v) for v in box_from_mask(mask))
    return float(x0), float(y0), float(x1), float(y1)


def train_assist(model: SamModel, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
                 kinds: Sequence[str] = ("box", "point"), steps: int = 30, lr: float = 5e-3, batch: int = 2,
                 box_jitter: tuple[float, float] = (0.05, 0.2), max_corrections: int = 2, seed: int = 0,
                 window=None, embeddings=None, progress=None, snapshots: Sequence[int] = ()) -> AssistResult:
    """Train a copy of ``model``'s prompt encoder on 2-5 (image, mask) slices (module doc). Each step
    runs ``batch`` slices drawn at random with one prompt shape (start kind + number of corrections) drawn
    for the step, so a step costs the same whatever the number of slices.
    ``embeddings``: the slices' features if already computed (list of (1, 256, 64, 64) tensors).
    ``snapshots``: steps after which the assisted model is also kept (``result.snapshots``; to compare step counts
    in one run: a run of n steps is the first n steps of a longer one with the same seed)."""
    from .evaluate.clicks import ClickSimulator
    from .prompts import Prompts
    from .train.cache import input_size_for
    from .train.engine import PromptDecoder, low_res_target
    from .train.losses import dice_focal_loss
    from .train.prompts import to_model_inputs

    masks = [np.asarray(m, bool) for m in masks]
    if not 2 <= len(images) == len(masks) <= MAX_SLICES or any(not m.any() for m in masks):
        raise SonoSAMError(f"SAM^assist needs 2-{MAX_SLICES} slices, each with a non-empty mask; got {len(images)} "
                           f"images and {len(masks)} masks ({sum(not m.any() for m in masks)} empty).")
    check_masks(images, masks)
    kinds = check_kinds(kinds)
    began = time.perf_counter()
    if embeddings is None:
        embeddings = [model.encode(image, window).features for image in images]
    features = torch.cat([torch.as_tensor(e).reshape(1, *e.shape[-3:]) for e in embeddings]).to(model.device).clone()
    encoded, cpu_began = time.perf_counter(), time.process_time()
    kept = {}

    prompt_encoder = copy.deepcopy(model.sam.prompt_encoder)
    params = [p for p in prompt_encoder.parameters()]
    net = PromptDecoder(prompt_encoder, model.sam.mask_decoder)
    sizes = [(m.shape, input_size_for(m.shape, model.spec.image_size)) for m in masks]
    targets = torch.cat([low_res_target(m, s[1], model.spec.image_size) for m, s in zip(masks, sizes)])[:, None]
    targets = targets.to(model.device)
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    simulator = ClickSimulator(rng=rng, point_jitter=0.2, mode="random")
    decoder_sizes = [s[0] for s in sizes]
    losses: list[float] = []

    def forward(prompts, chosen):
        tensors = to_model_inputs(prompts, [decoder_sizes[i] for i in chosen], model.transform, model.device)
        return net(features[chosen], points=tensors.points, boxes=tensors.boxes)[0]

    def as_masks(logits, chosen):  # low-res logits -> masks on each slice's grid, for the correction clicks
        out = []
        for row, i in enumerate(chosen):
            shape, input_size = sizes[i]
            up = model.sam.postprocess_masks(logits[row:row + 1], input_size, shape)
            out.append((up[0, 0] > model.sam.mask_threshold).cpu().numpy())
        return out

    for step in range(steps):
        kind = kinds[int(rng.integers(len(kinds)))]
        chosen = sorted(rng.choice(len(masks), size=min(batch, len(masks)), replace=False).tolist())
        prompts = []
        for m in (masks[i] for i in chosen):
            p = Prompts(box=_box(m, rng, *box_jitter)) if kind == "box" else simulator.start(m, "point")
            prompts.append(p)
        for _ in range(int(rng.integers(0, max_corrections + 1))):
            with torch.no_grad():
                predicted = as_masks(forward(prompts, chosen), chosen)
            for j, (pred, m) in enumerate(zip(predicted, (masks[i] for i in chosen))):
                click, prompts[j] = simulator.correct(pred, m, prompts[j])
                if click is None:   # perfect already: a positive click inside keeps the batch's shape
                    rows, cols = np.nonzero(m)
                    prompts[j] = prompts[j].add_click(int(cols[len(cols) // 2]), int(rows[len(rows) // 2]), True)
        with torch.enable_grad():
            loss = dice_focal_loss(forward(prompts, chosen), targets[chosen]).mean()
            grads = torch.autograd.grad(loss, params, allow_unused=True)  # frozen modules get no gradient
        for p, g in zip(params, grads):
            p.grad = g
        optimiser.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
        if step + 1 in snapshots and step + 1 < steps:
            kept[step + 1] = assisted_model(model, copy.deepcopy(prompt_encoder).eval(), kinds)
    assisted = assisted_model(model, prompt_encoder.eval(), kinds)
    config = dict(slices=len(masks), kinds=list(kinds), steps=steps, lr=lr, batch=batch, box_jitter=list(box_jitter),
                  max_corrections=max_corrections, seed=seed)
    return AssistResult(assisted, time.perf_counter() - encoded, encoded - began, losses,
                        sum(p.numel() for p in params), config, time.process_time() - cpu_began, {**kept, steps: assisted})


def save_assist(result: AssistResult, path, name: str | None = None, *, overwrite: bool = False) -> tuple:
    """Write the learned prompt encoder (with the decoder it was trained against) over the base weights:
    ``load_model(str(path))`` gives the assisted model back. An existing ``path`` or its ``.json`` is replaced
    only with ``overwrite=True``."""
    from pathlib import Path

    from .io import check_output_path
    from .train.checkpoint import save_checkpoint

    for target in (Path(path), Path(path).with_suffix(".json")):
        check_output_path(target, overwrite, parents=True)

    return save_checkpoint(result.model, path, name=name, kind="assist", weights="decoder",
                           training={"config": result.config, "seconds": result.seconds},
                           description=f"{result.model.spec.description} ({result.config['slices']} slices)")


class AssistedPredictor(Predictor):
    """A predictor answering with an assisted model: the base predictor's embeddings and cache (same image
    encoder, same ``model_id``), the learned prompt encoder for decoding. A Predictor (the core's functions
    take it as one) whose encoding is all the base's: no cache or worker of its own; drop it to go back."""

    def __init__(self, base, model: SamModel, result: AssistResult | None = None):  # noqa: D107 - no super():
        self.base, self.model, self.result = base, model, result                  # the base's state is used

    def __getattr__(self, name):   # anything else the base offers (cache, ...)
        return getattr(self.base, name)

    @property
    def encoder_calls(self) -> int:
        return self.base.encoder_calls

    def embedding(self, image, key=None, window=None):
        return self.base.embedding(image, key, window)

    def embed_together(self, items, window=None):
        return self.base.embed_together(items, window)

    def is_cached(self, key, window=None) -> bool:
        return self.base.is_cached(key, window)

    def prefetch(self, items, window=None, on_progress=None):
        return self.base.prefetch(items, window, on_progress)

    def predict(self, image, prompts=None, *, points=None, labels=None, box=None, mask_logits=None,
                multimask: bool = False, key=None, window=None):
        from .prompts import as_prompts

        prompts = as_prompts(prompts, points=points, labels=labels, box=box, mask_logits=mask_logits)
        return self.model.decode(self.base.embedding(image, key, window), prompts, multimask=multimask)

    def close(self) -> None:
        pass   # the base predictor is not this one's to close


def learn_assist(predictor, stack: np.ndarray, slices: Sequence[int], masks: Sequence[np.ndarray], *,
                 window=None, key_prefix=None, key=None, progress=None, **options) -> AssistedPredictor:
    """SAM^assist on slices of a stack (a volume's slices along axis 0, or a loop's frames) through a
    predictor: the slices' embeddings come from (and stay in) its cache under ``(key_prefix, 0, index)``
    (the keys sonosam.volume.propagate uses, so propagation reuses them; or ``key(index)``), then ``train_assist``. The one
    call the server's ``assist`` job and the Slicer logic make. ``options``: train_assist's (kinds, steps,
    seed, ...). Returns the AssistedPredictor (``.result``: seconds, losses, config)."""
    slices = check_slices(slices)
    if len(masks) != len(slices):
        raise SonoSAMError(f"Give one mask per slice ({len(slices)} slices, {len(masks)} masks).")
    bad = [i for i in slices if not 0 <= i < len(stack)]
    if bad:
        raise SonoSAMError(f"Slice {bad[0]} is outside 0..{len(stack) - 1}.")
    check_masks([stack[i] for i in slices], masks)   # before any slice is encoded
    base = getattr(predictor, "base", predictor)   # learning again starts from the base model
    began = time.perf_counter()
    keys = [key(i) if key is not None else None if key_prefix is None else (key_prefix, 0, i) for i in slices]
    embeddings = [base.embedding(stack[i], key=k, window=window).features for i, k in zip(slices, keys)]
    result = train_assist(base.model, [stack[i] for i in slices], list(masks), window=window, embeddings=embeddings,
                          progress=progress, **options)
    result.encode_seconds = time.perf_counter() - began - result.seconds
    result.config["slice_indices"] = slices
    return AssistedPredictor(base, result.model, result)
