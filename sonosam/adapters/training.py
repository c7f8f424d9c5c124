"""Training Med-SA adapters on 3D volumes + label maps, and inference with them over a whole volume.

Slices are taken along one axis of a volume; D consecutive slices form a slab that goes through the
image encoder as one batch (so SD-Trans can attend across them). Prompts (boxes and/or clicks) are
simulated from the label slices; the loss is Dice + focal on the decoder's low-resolution logits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputImageError, PromptError
from ..train.losses import dice_focal_loss  # one DiceFocal for every trainer
from ..image import volume_window  # one intensity window rule for every volume consumer
from .modules import DEFAULT_CONFIG, _encoder_kind, _unwrap, encoder_stem, encoder_trunk, is_adapted
from .modules import slab_depth as slab_depth_of

PROMPT_MODES = ("box", "click", "box+click", "mixed")


# --------------------------------------------------------------------------------- prompt simulation
def simulate_box(mask: np.ndarray, rng: np.random.Generator | None = None, jitter: float = 0.1):
    """Bounding box (x0, y0, x1, y1) of a 2D mask, each side moved by up to `jitter` x the box size:
    the evaluation simulator's box (one sampler for evaluation, training and adapters). None if empty."""
    from ..evaluate.clicks import box_from_mask

    if not np.asarray(mask).any():
        return None
    return tuple(float(v) for v in box_from_mask(mask, jitter=jitter, rng=rng))


def simulate_clicks(mask: np.ndarray, rng: np.random.Generator | None = None, positive: int = 1,
                    negative: int = 0):
    """`positive` clicks well inside the mask (distance to its edge at least half the largest) and
    `negative` clicks in a band just outside it. Returns (points [(x, y)...], labels [1/0...])."""
    from scipy import ndimage

    rng = rng if rng is not None else np.random.default_rng()
    mask = np.asarray(mask, bool)
    if not mask.any():
        return [], []
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    inner = np.argwhere(dist >= 0.5 * dist.max())
    points, labels = [], []
    for y, x in inner[rng.integers(len(inner), size=positive)]:
        points.append((float(x), float(y)))
        labels.append(1)
    if negative:
        band = np.argwhere(ndimage.binary_dilation(mask, iterations=5) & ~mask)
        for y, x in band[rng.integers(len(band), size=negative)] if len(band) else []:
            points.append((float(x), float(y)))
            labels.append(0)
    return points, labels


# ------------------------------------------------------------------------------------- preprocessing
class SliceEncoderInput:
    """Slices (2D arrays) -> the model's (D, 3, S, S) encoder input, mirroring SamModel.preprocess:
    a volume-wide intensity window to uint8, resize of the longest side to S, min-max normalisation for
    MedSAM-style models, then Sam.preprocess (mean/std, padding)."""

    def __init__(self, model, window: tuple[float, float], normalization: str | None = None) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam = _unwrap(model)
        spec = getattr(model, "spec", None)
        if normalization is None:
            normalization = getattr(spec, "normalization", None)
        if normalization is None:  # a bare Sam: LiteMedSAM-style models use pixel_std 255
            normalization = "minmax" if float(self.sam.pixel_std.flatten()[0]) > 100 else "imagenet"
        self.minmax = normalization == "minmax"
        self.size = int(self.sam.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.size)
        self.low, self.high = float(window[0]), float(window[1])
        if not self.high > self.low:
            raise InputImageError(f"Window ({self.low}, {self.high}) is empty; "
                                  "give window=(low, high) with low < high.")

    def to_uint8(self, image: np.ndarray) -> np.ndarray:
        clipped = np.clip(np.asarray(image, np.float32), self.low, self.high)
        scaled = (clipped - self.low) * (255.0 / (self.high - self.low))
        gray = np.round(scaled).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)

    def __call__(self, slices: Sequence[np.ndarray]) -> torch.Tensor:
        device = self.sam.pixel_mean.device
        out = []
        for image in slices:
            resized = self.transform.apply_image(self.to_uint8(image))
            tensor = torch.as_tensor(resized, device=device).permute(2, 0, 1)[None].float()
            if self.minmax:
                low, high = tensor.min(), tensor.max()
                tensor = (tensor - low) / torch.clamp(high - low, min=1e-8) * 255.0
            out.append(self.sam.preprocess(tensor))
        return torch.cat(out)

    def input_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        return self.transform.get_preprocess_shape(shape[0], shape[1], self.size)

    def box(self, box, shape) -> torch.Tensor:
        arr = self.transform.apply_boxes(np.asarray(box, np.float64).reshape(1, 4), shape)
        return torch.as_tensor(arr, dtype=torch.float32, device=self.sam.pixel_mean.device)

    def points(self, points, labels, shape):
        coords = self.transform.apply_coords(np.asarray(points, np.float64).reshape(-1, 2), shape)
        device = self.sam.pixel_mean.device
        return (torch.as_tensor(coords, dtype=torch.float32, device=device)[None],
                torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=device)[None])

    def target(self, mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """Label slice -> (1, 1, h, w) binary target in the padded input frame, at the logits' size."""
        resized = self.transform.apply_image(np.asarray(mask, np.uint8) * 255) > 127
        frame = torch.zeros(self.size, self.size)
        frame[: resized.shape[0], : resized.shape[1]] = torch.as_tensor(resized, dtype=torch.float32)
        low = F.interpolate(frame[None, None], size=size, mode="area")
        return (low > 0.5).float().to(self.sam.pixel_mean.device)


def decode(sam, embedding: torch.Tensor, box: torch.Tensor | None = None, points=None) -> torch.Tensor:
    """One slice's embedding (1, C, h, w) + prompts in input-frame coordinates -> low-res logits (1, 1, h', w')."""
    sparse, dense = sam.prompt_encoder(points=points, boxes=box, masks=None)
    logits, _ = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)
    return logits


class StemCache:
    """Per-slice outputs of the encoder's frozen stem (see encoder_stem), kept up to a memory budget.
    Exact: the stem holds no adapters and treats each slice on its own."""

    def __init__(self, budget_mib: float = 512) -> None:
        self.budget = budget_mib * 2**20
        self.used = 0
        self.items: dict = {}

    def encode(self, sam, prep: "SliceEncoderInput", slices: Sequence[np.ndarray], keys: Sequence) -> torch.Tensor:
        """Image embeddings (D, C, h, w) of a slab, through the cache."""
        if self.budget <= 0 or _encoder_kind(sam.image_encoder) == "other":
            return sam.image_encoder(prep(slices))
        fresh = {}
        missing = [i for i, key in enumerate(keys) if key not in self.items]
        if missing:
            with torch.no_grad():
                stems = encoder_stem(sam.image_encoder, prep([slices[i] for i in missing]))
            for i, stem in zip(missing, stems):
                fresh[i] = stem
                size = stem.numel() * stem.element_size()
                if self.used + size <= self.budget:
                    self.items[keys[i]] = stem
                    self.used += size
        batch = torch.stack([fresh[i] if i in fresh else self.items[key] for i, key in enumerate(keys)])
        return encoder_trunk(sam.image_encoder, batch)


# ------------------------------------------------------------------------------------------ training
@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)   # one per optimiser step
    seconds: float = 0.0
    slabs: list[tuple[int, int, int]] = field(default_factory=list)  # (volume index, first slice, depth)
    stem_cache: "StemCache | None" = field(default=None, repr=False)

    def summary(self, window: int = 10) -> str:
        if not self.losses:
            return "no steps"
        n = min(window, len(self.losses))
        first, last = np.mean(self.losses[:n]), np.mean(self.losses[-n:])
        return f"{len(self.losses)} steps in {self.seconds:.0f} s: mean loss {first:.4f} (first {n}) -> {last:.4f} (last {n})"


def _as_array(volume) -> np.ndarray:
    return np.asarray(getattr(volume, "array", volume))


def _label_mask(label: np.ndarray, label_value) -> np.ndarray:
    if label_value is None:
        return label != 0
    values = np.atleast_1d(np.asarray(label_value))
    return np.isin(label, values)


def _default_prompt(model) -> str:
    kinds = getattr(getattr(model, "spec", None), "prompt_kinds", None)
    return "mixed" if kinds and "point" in kinds else "box"


def _prompts(mode: str, mask: np.ndarray, rng, jitter: float):
    if mode == "mixed":
        mode = PROMPT_MODES[rng.integers(3)]
    box = simulate_box(mask, rng, jitter) if mode in ("box", "box+click") else None
    points = simulate_clicks(mask, rng, positive=1, negative=int(rng.integers(2))) if mode != "box" else None
    return box, points


def train_adapters(model, volumes, labels, label_value=None, *, steps: int = 100, slab_depth: int | None = None,
                   lr: float = 1e-4, prompt: str | None = None, jitter: float = 0.1, axis: int = 0, seed: int = 0,
                   min_area: int = 10, windows: Sequence[tuple[float, float]] | None = None,
                   slabs: Sequence[tuple[int, int]] | None = None, stem_cache_mib: float = 512,
                   log: Callable[[str], None] | None = None,
                   log_every: int = 10, callback: Callable[[int, float], bool | None] | None = None) -> TrainResult:
    """Train the Med-SA adapters of `model` (see add_medsa_adapters) on slabs of `slab_depth` slices
    (default: the adapters' configured depth; a depth given here is recorded in it, and saved with them).

    volumes / labels: 3D arrays (or sonosam.io.Volume), one or a list; label_value: int, list of ints
    (their union is the target) or None (any non-zero label). Each step picks a slab that holds the
    structure, simulates a prompt per slice (`prompt`: box, click, box+click or mixed; default: box for
    box-only models, else mixed), and takes one Adam step on Dice + focal loss over the slices whose
    structure covers at least `min_area` pixels. `slabs` fixes the slabs to cycle through
    ((volume index, first slice) pairs). The base model stays in eval mode (frozen batch-norm statistics);
    only parameters with requires_grad (the adapters) are optimised. `callback(step, loss)` returning
    True stops early. The frozen stem's per-slice outputs are cached (`stem_cache_mib`), which spares
    about a third of the encoder's forward time for slices seen again."""
    sam = _unwrap(model)
    if not is_adapted(sam):
        raise ValueError("Add adapters first: add_medsa_adapters(model).")
    if slab_depth is None:
        slab_depth = int(sam.medsa_config.get("slab_depth", DEFAULT_CONFIG["slab_depth"]))
    sam.medsa_config["slab_depth"] = int(slab_depth)   # inference (propagation) encodes the same slabs
    prompt = prompt or _default_prompt(model)
    if prompt not in PROMPT_MODES:
        raise PromptError(f"Unknown prompt mode {prompt!r}; use one of {', '.join(PROMPT_MODES)}.")
    volumes = list(volumes) if isinstance(volumes, (list, tuple)) else [volumes]
    labels = list(labels) if isinstance(labels, (list, tuple)) else [labels]
    if len(volumes) != len(labels):
        raise InputImageError(f"{len(volumes)} volumes but {len(labels)} label maps; give one label map per volume.")
    vols, masks, positives = [], [], []
    for i, (volume, label) in enumerate(zip(volumes, labels)):
        v, lab = np.moveaxis(_as_array(volume), axis, 0), np.moveaxis(_as_array(label), axis, 0)
        if v.ndim != 3 or v.shape != lab.shape:
            raise InputImageError(f"Volume {i} has shape {v.shape} but its label map {lab.shape}; they must match.")
        mask = _label_mask(lab, label_value)
        pos = np.flatnonzero(mask.reshape(len(mask), -1).sum(1) >= min_area)
        vols.append(v)
        masks.append(mask)
        positives.append(pos)
    if not any(len(p) for p in positives):
        raise InputImageError(f"No slice holds label {label_value} (at least {min_area} pixels) in any label map.")
    windows = list(windows) if windows is not None else [volume_window(v) for v in vols]
    inputs = [SliceEncoderInput(model, w) for w in windows]
    rng = np.random.default_rng(seed)
    params = [p for p in sam.parameters() if p.requires_grad]
    if not params:
        raise ValueError("No trainable parameters; did you call freeze_base/add_medsa_adapters(freeze=True)?")
    optimizer = torch.optim.Adam(params, lr=lr)
    sam.eval()
    result = TrainResult()
    cache = StemCache(stem_cache_mib)
    start = time.perf_counter()
    candidates = [i for i, p in enumerate(positives) if len(p)]
    for step in range(steps):
        if slabs:
            vi, s0 = slabs[step % len(slabs)]
        else:
            vi = candidates[rng.integers(len(candidates))]
            centre = positives[vi][rng.integers(len(positives[vi]))]
            s0 = int(np.clip(centre - rng.integers(slab_depth), 0, max(0, len(vols[vi]) - slab_depth)))
        depth = min(slab_depth, len(vols[vi]) - s0)
        prep, shape = inputs[vi], vols[vi].shape[1:]
        embeddings = cache.encode(sam, prep, [vols[vi][s0 + d] for d in range(depth)],
                                  [(vi, s0 + d) for d in range(depth)])
        losses = []
        for d in range(depth):
            mask = masks[vi][s0 + d]
            if mask.sum() < min_area:
                continue
            box, clicks = _prompts(prompt, mask, rng, jitter)
            logits = decode(sam, embeddings[d:d + 1], prep.box(box, shape) if box is not None else None,
                            prep.points(*clicks, shape) if clicks is not None else None)
            losses.append(dice_focal_loss(logits, prep.target(mask, logits.shape[-2:])).mean())
        if not losses:
            continue
        loss = torch.stack(losses).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result.losses.append(float(loss.detach()))
        result.slabs.append((vi, s0, depth))
        if log and (step % log_every == 0 or step == steps - 1):
            log(f"step {step + 1}/{steps}: loss {result.losses[-1]:.4f} (slab {vi}:{s0}-{s0 + depth - 1}, "
                f"{time.perf_counter() - start:.0f} s)")
        if callback and callback(step, result.losses[-1]):
            break
    result.seconds = time.perf_counter() - start
    result.stem_cache = cache
    return result


@torch.no_grad()
def slab_loss(model, volume, label, label_value, first: int, depth: int, *, prompt: str = "box", jitter: float = 0.0,
              axis: int = 0, seed: int = 0, window=None, min_area: int = 10, stem_cache: StemCache | None = None,
              volume_index: int = 0) -> float:
    """Dice + focal loss of the model on one slab (no gradient), with prompts simulated like training.
    `stem_cache` (e.g. TrainResult.stem_cache, with the training's volume index) avoids recomputing the stem."""
    sam = _unwrap(model)
    vol = np.moveaxis(_as_array(volume), axis, 0)
    mask = _label_mask(np.moveaxis(_as_array(label), axis, 0), label_value)
    prep = SliceEncoderInput(model, window or volume_window(vol))
    rng = np.random.default_rng(seed)
    cache = stem_cache if stem_cache is not None else StemCache(0)
    embeddings = cache.encode(sam, prep, [vol[first + d] for d in range(depth)],
                              [(volume_index, first + d) for d in range(depth)])
    losses = []
    for d in range(depth):
        if mask[first + d].sum() < min_area:
            continue
        box, clicks = _prompts(prompt, mask[first + d], rng, jitter)
        logits = decode(sam, embeddings[d:d + 1], prep.box(box, vol.shape[1:]) if box is not None else None,
                        prep.points(*clicks, vol.shape[1:]) if clicks is not None else None)
        losses.append(float(dice_focal_loss(logits, prep.target(mask[first + d], logits.shape[-2:])).mean()))
    return float(np.mean(losses)) if losses else float("nan")


# ----------------------------------------------------------------------------------------- inference
@torch.no_grad()
def segment_volume_with_adapters(model, volume, boxes: Mapping[int, Sequence[float]] | Sequence | None = None, *,
                                 points: Mapping[int, tuple[Sequence, Sequence]] | None = None,
                                 slab_depth: int | None = None, axis: int = 0,
                                 window: tuple[float, float] | None = None,
                                 progress: Callable[[int, int], bool | None] | None = None) -> np.ndarray:
    """Segment a volume slab by slab with an (adapted) model; returns a bool array of the volume's shape.

    boxes: {slice index: (x0, y0, x1, y1)} (or a sequence with None for unprompted slices), in the
    slice's pixel coordinates (x = column, y = row) along `axis`; points: {slice: ([(x, y)...], [1/0...])}.
    Slices are grouped into consecutive slabs of `slab_depth` ([0, D), [D, 2D), ...; default: the depth
    the adapters were trained with); only slabs that hold a prompted slice are encoded, and unprompted
    slices stay empty. `progress(done, total)` returning True cancels (the slabs done so far are kept)."""
    sam = _unwrap(model)
    slab_depth = slab_depth or slab_depth_of(model)
    vol = np.moveaxis(_as_array(volume), axis, 0)
    if vol.ndim != 3:
        raise InputImageError(f"A volume must be 3D; got shape {vol.shape}.")
    if boxes is not None and not isinstance(boxes, Mapping):
        boxes = {i: b for i, b in enumerate(boxes) if b is not None}
    boxes, points = dict(boxes or {}), dict(points or {})
    prompted = sorted(set(boxes) | set(points))
    for k in prompted:
        if not 0 <= k < len(vol):
            raise PromptError(f"Prompt on slice {k}, but the volume has {len(vol)} slices along axis {axis}.")
    prep = SliceEncoderInput(model, window or volume_window(vol))
    shape = vol.shape[1:]
    out = np.zeros(vol.shape, bool)
    starts = sorted({(k // slab_depth) * slab_depth for k in prompted})
    for n, s0 in enumerate(starts):
        depth = min(slab_depth, len(vol) - s0)
        embeddings = sam.image_encoder(prep([vol[s0 + d] for d in range(depth)]))
        for d in range(depth):
            k = s0 + d
            if k not in boxes and k not in points:
                continue
            box = prep.box(boxes[k], shape) if k in boxes else None
            clicks = prep.points(*points[k], shape) if k in points else None
            logits = decode(sam, embeddings[d:d + 1], box, clicks)
            full = sam.postprocess_masks(logits, prep.input_size(shape), shape)
            out[k] = (full[0, 0] > sam.mask_threshold).cpu().numpy()
        if progress and progress(n + 1, len(starts)):
            break
    return np.moveaxis(out, 0, axis)
