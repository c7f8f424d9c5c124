"""Sam2Rad's prompt predictor network (PPN): prompts learned per class, so a frozen SAM-family model
segments that class with no clicks.

Learnable query tokens (``n_tokens`` per class) cross-attend to the frozen image embedding (pooled to
32x32, with SAM's dense positional encoding) and the image tokens attend back (SAM's two-way transformer).
Per class: the first two tokens give the box (centre and size), the third a 256x256 mask prompt (a hypernetwork
over the upscaled image tokens), tokens 3.. become prompt embeddings for the frozen mask decoder, and an
objectness head says whether the class is on the image at all. Modes:

* autonomous: ``auto_segment(ppn, model, embedding, "Thalamus_L")`` - no clicks;
* semi-autonomous: the same with ``points=/labels=`` - the user's clicks join the learned prompts;
* manual: the model as usual (``model.decode``), nothing learned.

Loss (Sam2Rad): 10 x focal (gamma 3, alpha 0.7) on the mask prompt and the final mask + L1 + GIoU on the
box + BCE objectness; AdamW (weight decay 0.1, lr 1e-4; we use 1e-3 for the short CPU runs, see
docs/seeds.md). The SAM model (all of it) stays frozen.

    ppn, log = train_ppn(model, images, label_maps, classes={"Thalamus_L": 77}, steps=200)
    save_ppn(ppn, "thalamus.ppn.pt"); ppn = load_ppn("thalamus.ppn.pt")
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, SonoSAMError, TrainingError
from .models import Embedding, Prediction, SamModel

__all__ = ["PromptPredictor", "AutoResult", "auto_segment", "add_auto_object", "check_base", "train_ppn", "save_ppn",
           "load_ppn", "check_classes_present", "PPNLog", "PPNValidation", "ppn_validator", "split_volumes"]

FORMAT = "sonosam-ppn"


class _MLP(nn.Sequential):
    def __init__(self, dims: Sequence[int]):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)


class PromptPredictor(nn.Module):
    def __init__(self, classes: Sequence[str], n_tokens: int = 6, dim: int = 256, depth: int = 2, mlp_dim: int = 512,
                 pool: int = 2, base_model: str = ""):
        from segment_anything.modeling.common import LayerNorm2d
        from segment_anything.modeling.transformer import TwoWayTransformer

        super().__init__()
        if n_tokens < 4:
            raise ValueError("n_tokens must be >= 4: two box corners, the mask token and one prompt embedding")
        self.classes, self.n_tokens, self.pool, self.base_model = list(classes), n_tokens, pool, base_model
        self.config = dict(classes=self.classes, n_tokens=n_tokens, dim=dim, depth=depth, mlp_dim=mlp_dim, pool=pool,
                           base_model=base_model)
        # Unit-scale queries, like SAM's own output tokens: the transformer's first self-attention *replaces* the
        # tokens (no residual), so near-zero queries attend uniformly and every token comes out the same (the box's
        # two corner tokens gave one point: a box of zero size, whatever the image).
        self.queries = nn.Parameter(torch.randn(len(self.classes) * n_tokens, dim))
        self.transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=8, mlp_dim=mlp_dim)
        self.box_head = _MLP([2 * dim, dim, 4])   # tokens 0-1 together -> box centre and size
        self.mask_head = _MLP([dim, dim, 32])
        up = [nn.ConvTranspose2d(dim, 64, 2, 2), LayerNorm2d(64), nn.GELU(), nn.ConvTranspose2d(64, 32, 2, 2), nn.GELU()]
        for _ in range(int(np.log2(pool))):   # 64 / pool -> 256: x4, then x2 per pooling step
            up += [nn.ConvTranspose2d(32, 32, 2, 2), nn.GELU()]
        self.upscale = nn.Sequential(*up)
        self.embed_head = nn.Linear(dim, dim)
        nn.init.normal_(self.embed_head.weight, std=0.01)   # learned tokens start quiet: the box leads at first
        nn.init.zeros_(self.embed_head.bias)
        self.object_head = _MLP([dim, dim, 1])
        # LiteMedSAM's embedding is small (rms ~0.1) next to SAM's positional encoding (rms ~0.7): unnormalised,
        # the queries' attention is almost purely positional and they learn where a class usually is, not
        # what it looks like. A per-location channel norm puts content and position on the same scale.
        self.input_norm = LayerNorm2d(dim)
        # The frozen decoder of a box-trained model has only seen "no mask" as its dense prompt; a mask prompt
        # through mask_downscaling is larger than the image embedding and wrecks its output (docs/training.md).
        # The mask prompt is added scaled by this gate, which starts at 0 and grows only if it helps.
        self.mask_gate = nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor, dense_pe: torch.Tensor) -> dict:
        """features (B, 256, 64, 64), dense_pe (1, 256, 64, 64) -> per class: box (B, C, 4) normalised
        x0 y0 x1 y1 in [0, 1] of the encoder's input square, mask (B, C, 256, 256) logits, embeddings
        (B, C, n_tokens - 3, 256), objectness (B, C) logits."""
        b = features.shape[0]
        features = self.input_norm(features)
        if self.pool > 1:
            features, dense_pe = F.avg_pool2d(features, self.pool), F.avg_pool2d(dense_pe, self.pool)
        tokens, keys = self.transformer(features, dense_pe.expand(b, -1, -1, -1), self.queries.expand(b, -1, -1))
        c, n = len(self.classes), self.n_tokens
        tokens = tokens.reshape(b, c, n, -1)
        # Centre and size, not one corner per token: similar tokens gave two equal corners, a box of zero size.
        centre_size = torch.sigmoid(self.box_head(tokens[:, :, :2].flatten(2)))   # (B, C, 4)
        centre, size = centre_size[..., :2], centre_size[..., 2:]
        low, high = centre - size / 2, centre + size / 2   # not clamped: a clamped side gets no gradient
        side = features.shape[-1]
        grid = self.upscale(keys.transpose(1, 2).reshape(b, -1, side, side))  # (B, 32, 256, 256)
        mask = torch.einsum("bck,bkhw->bchw", self.mask_head(tokens[:, :, 2]), grid)
        return dict(box=torch.cat([low, high], -1), mask=mask, embeddings=self.embed_head(tokens[:, :, 3:]),
                    objectness=self.object_head(tokens.mean(2))[..., 0])

    def class_index(self, name: str) -> int:
        if name not in self.classes:
            raise SonoSAMError(f"This prompt predictor knows {', '.join(self.classes)}, not {name!r}; train one "
                               f"for it with `sonosam train ppn --class {name}`.")
        return self.classes.index(name)


def _decode(model: SamModel, features, box01, mask_logits, embeddings, points=None, gate=None):
    """The frozen decoder fed the learned prompts: box corners through the prompt encoder's own box
    embedding, the learned embeddings (and user points) as extra sparse tokens, and as the dense prompt
    "no mask" plus ``gate`` x the mask prompt through its mask downscaling (gate None: the mask prompt alone,
    as SAM would take it). -> (low-res logits (B, 1, 256, 256), predicted IoU (B, 1))."""
    pe = model.sam.prompt_encoder
    side = float(model.spec.image_size)
    sparse = [pe._embed_boxes(box01 * side), embeddings]
    if points is not None:
        sparse.append(pe._embed_points(points[0], points[1], pad=False))
    sparse = torch.cat(sparse, 1)
    if gate is None:
        dense = pe._embed_masks(mask_logits[:, None])
    else:
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1) + gate * pe._embed_masks(mask_logits[:, None])
    decoder = model.sam.mask_decoder   # as train.engine.PromptDecoder, with our own sparse/dense prompts
    b = features.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    hs, src = decoder.transformer(features + dense, pe.get_dense_pe().expand(b, -1, -1, -1), tokens)
    c, h, w = features.shape[1:]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1])
    masks = (hyper[:, None] @ upscaled.flatten(2)).view(b, 1, *upscaled.shape[-2:])
    return masks, decoder.iou_prediction_head(hs[:, 0])[:, :1]


@dataclass
class AutoResult:
    present: bool                    # objectness above the threshold
    objectness: float                # probability that the class is on the image
    box: np.ndarray                  # (4,) x0 y0 x1 y1 in image pixels (the predicted box prompt)
    prediction: Prediction | None    # None when the class is judged absent (and not forced)

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.prediction is None else self.prediction.mask


def check_base(ppn: PromptPredictor, model: SamModel) -> None:
    """The learned prompts are tuned to one frozen decoder: another model's decoder reads them as noise."""
    if ppn.base_model and ppn.base_model != model.spec.name:
        raise SonoSAMError(f"This prompt predictor was trained over the model {ppn.base_model!r}, not "
                           f"{model.spec.name!r}; load that model (--model {ppn.base_model}) to use it.")


@torch.inference_mode()
def auto_segment(ppn: PromptPredictor, model: SamModel, embedding: Embedding, class_name: str, *, points=None,
                 labels=None, threshold: float = 0.5, force: bool = False) -> AutoResult:
    """Autonomous (no points) or semi-autonomous (the user's points join the learned prompts) segmentation
    of one class on one encoded image."""
    index = ppn.class_index(class_name)
    check_base(ppn, model)
    device = model.device
    out = ppn.to(device)(embedding.features, model.sam.prompt_encoder.get_dense_pe())
    objectness = float(torch.sigmoid(out["objectness"][0, index]))
    side = float(model.spec.image_size)
    scale = np.array([embedding.original_size[1] / embedding.input_size[1],
                      embedding.original_size[0] / embedding.input_size[0]] * 2)
    box = np.clip(out["box"][0, index].cpu().numpy() * side, 0, side) * scale
    if objectness < threshold and not force:
        return AutoResult(False, objectness, box, None)
    user = None
    if points is not None and len(points):
        coords = model.transform.apply_coords(np.asarray(points, np.float64).reshape(-1, 2), embedding.original_size)
        labels = np.ones(len(coords)) if labels is None else np.asarray(labels)
        user = (torch.as_tensor(coords, dtype=torch.float, device=device)[None],
                torch.as_tensor(labels, dtype=torch.int, device=device)[None])
    low_res, iou = _decode(model, embedding.features, out["box"][:, index], out["mask"][:, index],
                           out["embeddings"][:, index], user, gate=ppn.mask_gate)
    masks = model.sam.postprocess_masks(low_res, embedding.input_size, embedding.original_size) > model.sam.mask_threshold
    prediction = Prediction(masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy(),
                            [f"prompt predictor ({class_name}): objectness {objectness:.2f}"])
    return AutoResult(True, objectness, box, prediction)


def add_auto_object(tracker, ppn: PromptPredictor, class_name: str, frame: int = 0, *, threshold: float = 0.5,
                    force: bool = False, points=None, labels=None) -> AutoResult:
    """Start tracking ``class_name`` in a ``sonosam.track.Tracker`` from the prompt predictor's mask on
    ``frame`` (no clicks; ``points``/``labels``: the user's clicks join the learned prompts). The embedding
    goes through the tracker's own cache, so the tracker does not encode that frame again."""
    predictor = tracker.predictor
    embedding = predictor.embedding(tracker.frames[frame], key=tracker.frame_key(frame))
    result = auto_segment(ppn, predictor.model, embedding, class_name, points=points, labels=labels,
                          threshold=threshold, force=force)
    if not result.present:
        raise SonoSAMError(f"The prompt predictor finds no {class_name} on frame {frame} (objectness "
                           f"{result.objectness:.2f}); start from another frame or give a box.")
    if not result.mask.any():
        raise SonoSAMError(f"The prompt predictor's {class_name} mask on frame {frame} is empty; start from "
                           "another frame or give a box.")
    tracker.add_object(class_name, frame, mask=result.mask)
    return result


def _focal(logits, target, gamma=3.0, alpha=0.7):
    from .train.losses import focal_loss

    return focal_loss(logits, target, gamma=gamma, alpha=alpha)


def _giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - generalised IoU of (N, 4) x0 y0 x1 y1 boxes."""
    area = lambda z: (z[:, 2] - z[:, 0]).clamp(min=0) * (z[:, 3] - z[:, 1]).clamp(min=0)  # noqa: E731
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    union = area(a) + area(b) - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    return 1 - (inter / union.clamp(min=1e-6) - (hull - union) / hull.clamp(min=1e-6))


@dataclass
class PPNLog:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    validation: list[tuple[int, float]] = field(default_factory=list)   # (step, score) when validate= is given
    best_step: int | None = None                                        # the step whose weights were kept
    details: list = field(default_factory=list)                         # what validate returned, per check


@dataclass
class PPNValidation:
    score: float                 # mean over classes of the per-slice autonomous score (see ppn_validator)
    per_class: dict              # name -> dice, present, absent, rejected, objectness_present, objectness_absent

    def __float__(self) -> float:
        return self.score

    def summary(self) -> str:
        parts = []
        for name, c in self.per_class.items():
            text = f"{name} Dice {c['dice']:.3f} on {c['present']}" if c["present"] else f"{name} (never present)"
            if c["absent"]:
                text += f", absent rejected {c['rejected']}/{c['absent']}"
            obj = [f"{v:.2f}" if v is not None else "-" for v in (c["objectness_present"], c["objectness_absent"])]
            parts.append(f"{text}, objectness {obj[0]}/{obj[1]}")
        return f"score {self.score:.3f} | " + " | ".join(parts)


def ppn_validator(model: SamModel, images: Sequence[np.ndarray], label_maps: Sequence[np.ndarray],
                  classes: dict[str, int], *, store=None, window=None):
    """validate(ppn) -> PPNValidation on held-out (image, label map) pairs, on the decoder's low-res grid (cheap,
    for picking weights while training). Per class and slice: where the class is present, its Dice if objectness
    says present (> 0.5), else 0 (missed); where absent, 1 if rejected, else 0. The score is the mean over
    classes of those per-slice scores; per class it also gives the Dice where present (missed = 0), the absent
    slices rejected and the mean objectness present / absent. The images are encoded once (``store``: an
    EmbeddingStore; else here) and kept in half precision."""
    from .train.cache import input_size_for

    if not images or len(images) != len(label_maps):
        raise SonoSAMError(f"Validation needs one label map per image (got {len(images)} images, {len(label_maps)}).")
    get = (lambda im: store.get(im, window).features) if store is not None else \
        (lambda im: model.encode(im, window).features[0].float().cpu())
    feats = torch.stack([get(im).half() for im in images])
    size = model.spec.image_size
    targets = [_targets(np.asarray(lm), list(classes.values()), input_size_for(np.asarray(lm).shape, size), size)
               for lm in label_maps]
    names = list(classes)

    @torch.no_grad()
    def validate(ppn: PromptPredictor) -> PPNValidation:
        pe = model.sam.prompt_encoder.get_dense_pe()
        rows = {c: dict(scores=[], dice=[], obj_present=[], obj_absent=[], rejected=0) for c in range(len(names))}
        for start in range(0, len(images), 8):
            f = feats[start:start + 8].float().to(model.device)
            out = ppn(f, pe)
            for b in range(f.shape[0]):
                mask_t, _, present = targets[start + b]
                for c, row in rows.items():
                    logit = float(out["objectness"][b, c])
                    said = logit > 0
                    prob = 1 / (1 + np.exp(-logit))
                    if not present[c]:
                        row["obj_absent"].append(prob)
                        row["rejected"] += not said
                        row["scores"].append(0.0 if said else 1.0)
                        continue
                    row["obj_present"].append(prob)
                    d = 0.0
                    if said:
                        logits, _ = _decode(model, f[b:b + 1], out["box"][b:b + 1, c], out["mask"][b:b + 1, c],
                                            out["embeddings"][b:b + 1, c], gate=ppn.mask_gate)
                        pred, gt = logits[0, 0] > 0, mask_t[c].to(logits.device) > 0.5
                        d = float(2 * (pred & gt).sum() / max(int(pred.sum() + gt.sum()), 1))
                    row["dice"].append(d)
                    row["scores"].append(d)
        mean = lambda v: float(np.mean(v)) if v else None   # noqa: E731
        per_class = {names[c]: dict(dice=mean(r["dice"]), present=len(r["dice"]), absent=len(r["obj_absent"]),
                                    rejected=r["rejected"], objectness_present=mean(r["obj_present"]),
                                    objectness_absent=mean(r["obj_absent"])) for c, r in rows.items()}
        score = float(np.mean([np.mean(r["scores"]) for r in rows.values() if r["scores"]]))
        return PPNValidation(score, per_class)

    return validate


def split_volumes(names: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Training and validation volumes: whole volumes (a volume = one subject or one loop), never slices of
    one volume on both sides (neighbouring slices are near copies). ``round(val_fraction x n)`` volumes, at
    least one when there are two or more, are held out, drawn with ``seed``; one volume: nothing to hold out."""
    names = list(names)
    if len(set(names)) != len(names):
        raise SonoSAMError(f"A volume is given twice: {sorted(n for n in set(names) if names.count(n) > 1)}.")
    if not 0 <= val_fraction < 1:
        raise SonoSAMError(f"The validation fraction must be in [0, 1); got {val_fraction}.")
    if len(names) < 2 or val_fraction == 0:
        return names, []
    n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    held = set(np.random.default_rng(seed).permutation(len(names))[:n_val].tolist())
    return [n for i, n in enumerate(names) if i not in held], [n for i, n in enumerate(names) if i in held]


def _targets(label_map: np.ndarray, values: Sequence[int], input_size, image_size: int):
    """Per class: low-res mask (C, 256, 256) on the decoder's padded-square grid, box (C, 4) normalised to
    the encoder's input square, present (C,)."""
    from .train.engine import low_res_target

    masks, boxes, present = [], [], []
    h, w = label_map.shape
    sy, sx = input_size[0] / h / image_size, input_size[1] / w / image_size
    for value in values:
        m = label_map == value
        masks.append(low_res_target(m, input_size, image_size)[0])
        if m.any():
            rows, cols = np.nonzero(m)
            boxes.append([cols.min() * sx, rows.min() * sy, (cols.max() + 1) * sx, (rows.max() + 1) * sy])
        else:
            boxes.append([0.0, 0.0, 0.0, 0.0])
        present.append(bool(m.any()))
    return torch.stack(masks), torch.tensor(boxes, dtype=torch.float32), torch.tensor(present)


def _balanced_batch(present: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Image indices for one batch: per draw a random class, then with even odds an image where it is
    present or one where it is absent (absent slices are most of a volume; without this the objectness
    head sees mostly "absent" and learns the base rate)."""
    chosen = []
    for _ in range(size):
        c = rng.integers(present.shape[1])
        pool = np.nonzero(present[:, c] == (rng.random() < 0.5))[0]
        if not len(pool):
            pool = np.arange(len(present))
        chosen.append(int(rng.choice(pool)))
    return np.array(chosen)


def ppn_losses(model: SamModel, ppn: PromptPredictor, features: torch.Tensor, mask_t: torch.Tensor,
               box_t: torch.Tensor, present: torch.Tensor, *, final: bool = True, dice_weight: float = 1.0,
               max_decoded: int | None = None, generator: torch.Generator | None = None) -> dict:
    """The loss terms on one batch (features (B, 256, 64, 64); targets as ``_targets`` per image, stacked):
    Sam2Rad's 10 x focal (gamma 3, alpha 0.7) on the mask prompt and the final mask, L1 + GIoU on the box,
    BCE objectness; plus ``dice_weight`` x soft Dice on both masks (focal alone moves small structures slowly).
    Mask and box terms only where the class is present. ``final``: run the frozen decoder for the final mask, on
    at most ``max_decoded`` random (image, class) pairs (the decoder is the costly part on a CPU)."""
    from .train.losses import dice_loss

    out = ppn(features, model.sam.prompt_encoder.get_dense_pe().detach())
    terms = {"objectness": F.binary_cross_entropy_with_logits(out["objectness"], present.float())}
    if present.any():
        b_idx, c_idx = torch.nonzero(present, as_tuple=True)
        prompt, target = out["mask"][b_idx, c_idx][:, None], mask_t[b_idx, c_idx][:, None]
        terms["mask_prompt"] = 10 * _focal(prompt, target).mean() + dice_weight * dice_loss(prompt, target).mean()
        box, box_target = out["box"][b_idx, c_idx], box_t[b_idx, c_idx]
        terms["box"] = F.l1_loss(box, box_target) + _giou(box, box_target).mean()
        if final:
            keep = torch.arange(len(b_idx))
            if max_decoded is not None and len(keep) > max_decoded:
                keep = torch.randperm(len(keep), generator=generator)[:max_decoded]
            b, c = b_idx[keep], c_idx[keep]
            # The box reaches the decoder detached: it is taught by its own L1 + GIoU terms. Through the positional
            # encoding the final-mask gradient pushed it wherever the learned tokens did best without it (a
            # zero-size box in a corner, measured), and then the box-trained decoder lost its strongest prompt.
            logits, _ = _decode(model, features[b], box[keep].detach(), out["mask"][b, c], out["embeddings"][b, c],
                                gate=ppn.mask_gate)
            target = target[keep]
            terms["final"] = 10 * _focal(logits, target).mean() + dice_weight * dice_loss(logits, target).mean()
    return terms


def check_classes_present(label_maps: Sequence[np.ndarray], classes: dict[str, int], what: str = "training") -> None:
    """Refuse classes whose label value is on none of the label maps: a prompt predictor trained on them would only
    ever have seen the class absent."""
    values = set()
    for label_map in label_maps:
        values.update(np.unique(np.asarray(label_map)).tolist())
    missing = [f"{name}={value}" for name, value in classes.items() if value not in values]
    if missing:
        raise TrainingError(f"No {what} slice holds {', '.join(missing)} (their label values are on none of the "
                            f"{len(label_maps)} {what} label maps): give each class's value in these maps, or other "
                            "data.")


def train_ppn(model: SamModel, images: Sequence[np.ndarray], label_maps: Sequence[np.ndarray], classes: dict[str, int],
              *, steps: int = 200, batch: int = 4, lr: float = 1e-3, weight_decay: float = 0.1, decoder_every: int = 1,
              seed: int = 0, store=None, window=None, n_tokens: int = 6, progress=None,
              max_seconds: float | None = None, dice_weight: float = 1.0, validate=None, validate_every: int = 50,
              ppn: PromptPredictor | None = None, max_decoded: int | None = 4,
              on_validation=None) -> tuple[PromptPredictor, PPNLog]:
    """Train a prompt predictor for ``classes`` (name -> label value) on 2D images with label maps; the
    SAM model stays frozen. ``store``: an EmbeddingStore (embeddings cached on disk), else encoded here.
    Batches are balanced per class between images where it is present and where it is absent. The final-mask
    loss (through the frozen decoder, the costly part on a CPU) is added every ``decoder_every`` steps, on at most
    ``max_decoded`` (image, class) pairs of the batch.
    ``validate(ppn) -> score`` (a float or a PPNValidation, higher is better; ``ppn_validator`` makes one), called
    every ``validate_every`` steps and at the end: the best-scoring weights are returned (``log.best_step``), and
    ``on_validation(ppn, step, result, best)`` after each check (``best``: the score improved; e.g. save then). ``max_seconds``: stop after this much training
    time (``log.steps`` says how many steps ran). ``ppn``: continue training this network instead of a new one."""
    from .train.cache import input_size_for

    if not images or len(images) != len(label_maps):
        raise SonoSAMError(f"Give one label map per image (got {len(images)} images, {len(label_maps)} label maps).")
    check_classes_present(label_maps, classes)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    get = (lambda im: store.get(im, window).features) if store is not None else \
        (lambda im: model.encode(im, window).features[0].float().cpu())
    features = torch.stack([get(im).half() for im in images])   # half: a few hundred slices stay in memory
    values = list(classes.values())
    size = model.spec.image_size
    targets = [_targets(np.asarray(lm), values, input_size_for(np.asarray(lm).shape, size), size) for lm in label_maps]
    present_all = torch.stack([t[2] for t in targets]).numpy()
    if ppn is None:
        ppn = PromptPredictor(list(classes), n_tokens=n_tokens, base_model=model.spec.name)
    elif ppn.classes != list(classes):
        raise SonoSAMError(f"The prompt predictor to continue knows {ppn.classes}, the data {list(classes)}.")
    ppn = ppn.to(model.device).train()
    optimiser = torch.optim.AdamW(ppn.parameters(), lr=lr, weight_decay=weight_decay)
    log = PPNLog()
    best: tuple[float, dict] | None = None

    def check(step):
        nonlocal best
        ppn.eval()
        result = validate(ppn)
        score = float(result)
        log.validation.append((step, score))
        log.details.append(result)
        improved = best is None or score > best[0]
        if improved:
            best = (score, {k: v.detach().clone() for k, v in ppn.state_dict().items()})
            log.best_step = step
        if on_validation is not None:
            on_validation(ppn, step, result, improved)
        ppn.train()

    started = time.perf_counter()
    for step in range(steps):
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
        chosen = _balanced_batch(present_all, batch, rng)
        feats = features[chosen].float().to(model.device)
        mask_t = torch.stack([targets[i][0] for i in chosen]).to(model.device)      # (B, C, 256, 256)
        box_t = torch.stack([targets[i][1] for i in chosen]).to(model.device)       # (B, C, 4)
        present = torch.stack([targets[i][2] for i in chosen]).to(model.device)     # (B, C)
        with torch.enable_grad():
            terms = ppn_losses(model, ppn, feats, mask_t, box_t, present, final=step % decoder_every == 0,
                               dice_weight=dice_weight, max_decoded=max_decoded, generator=generator)
            loss = sum(terms.values())
            params = list(ppn.parameters())
            grads = torch.autograd.grad(loss, params, allow_unused=True)   # SAM's own parameters stay frozen
        for p, g in zip(params, grads):
            p.grad = g
        optimiser.step()
        log.losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps, log.losses[-1])
        if validate is not None and (step + 1) % validate_every == 0:
            check(step + 1)
    log.steps = len(log.losses)
    if validate is not None and (not log.validation or log.validation[-1][0] != log.steps):
        check(log.steps)
    if best is not None:
        ppn.load_state_dict(best[1])
    log.seconds = time.perf_counter() - began
    return ppn.eval(), log


def save_ppn(ppn: PromptPredictor, path, extra: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write the prompt predictor (one rename: the old file or the new one, never half of one); an existing
    ``path`` is replaced only with ``overwrite=True``."""
    from .io import atomic_output, check_output_path

    path = check_output_path(path, overwrite, parents=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite) as tmp:
        torch.save({"format": FORMAT, "config": ppn.config, "state": ppn.state_dict(), "extra": extra or {}}, tmp)
    return path


def load_ppn(path, device=None) -> PromptPredictor:
    path = Path(path)
    try:
        data = torch.load(path, map_location=device or "cpu", weights_only=True)
        if data.get("format") != FORMAT:
            raise ValueError("not a prompt predictor file")
        ppn = PromptPredictor(**data["config"])
        ppn.load_state_dict(data["state"])
    except (OSError, ValueError, KeyError, RuntimeError, AttributeError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{path}: not a readable prompt predictor ({error}); it is written by "
                              "`sonosam train ppn`.") from None
    return ppn.eval()
