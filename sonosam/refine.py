"""Zero-shot segmentation refiner: a coarse probability map (from any segmenter, or a smoothed segment)
-> point prompts -> the frozen SAM-family model's mask. Nothing is trained.

* Positive points: the coarse map thresholded twice (``> 0.15``, then ``> 0.4 * max``), its pixels
  clustered by k-medoids (k-medoids++ seeding, then FasterPAM from the ``kmedoids`` package) for k in
  [4, 6]; k is the smallest whose next k lowers the inertia by less than ``gain`` (an elbow rule).
* Negative points, from the complementary problem: segment the *context* (the anatomy around the
  structure, e.g. the brain around a nucleus; by default a ring around the coarse region) minus the coarse
  foreground. Start from the positives flipped to negative (kept fixed) plus k random context pixels as
  positives; optimise those k coordinates with AdamW (lr 4e-3, <= 100 steps, early stop) against the BCE
  between the frozen model's output and the complementary mask, the points being differentiable through
  the prompt encoder's positional encoding. They end snapped into the complementary mask and become the
  negatives of the final prompt.

    result = refine(model, image, coarse, context=None, seed=0)   # model: SamModel or Predictor
    result.mask, result.positives, result.negatives

Points are (x, y) = (column, row) pixels, as everywhere in sonosam. Figures: docs/seeds.md."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .errors import PromptError, SonoSAMError, UnsupportedPromptError
from .models import Embedding, Prediction, mask_to_logits
from .prompts import Prompts

__all__ = ["RefineResult", "refine", "positive_points", "default_context", "optimise_negatives",
           "coarse_from_mask", "coarse_probabilities", "check_clicks"]

OVERSHOOT = 1.05   # a float map up to this much above 1 (interpolation overshoot) is clipped to 1, not refused


@dataclass
class RefineResult:
    mask: np.ndarray                 # (H, W) bool, the refined mask
    positives: np.ndarray            # (k, 2) float (x, y)
    negatives: np.ndarray            # (m, 2) float (x, y)
    prediction: Prediction           # the model's answer to positives + negatives
    k: int
    inertia: dict[int, float]        # k -> k-medoids loss (sum of distances to the medoid, px)
    region: np.ndarray               # (H, W) bool, the double-thresholded coarse region
    losses: list[float] = field(default_factory=list)  # BCE of the complementary problem per step

    @property
    def score(self) -> float:
        return self.prediction.score


def _as_prob(coarse) -> np.ndarray:
    prob = np.asarray(coarse)
    if prob.ndim != 2:
        raise PromptError(f"The coarse map must be 2D (rows, cols); got shape {prob.shape}.")
    prob = prob.astype(np.float32)
    if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise PromptError("The coarse map must hold probabilities in 0..1 (a 0/255 mask: divide by 255).")
    return prob


def coarse_probabilities(array, name: str = "The coarse map") -> np.ndarray:
    """A coarse map as read from a file or sent to the server -> probabilities 0..1 (float32), the one rule the
    command line and the server share: an integer map with values above 1 is a 0..255 picture (divided by 255);
    a float map is probabilities, clipped to 1 where it overshoots by at most ``OVERSHOOT`` (cubic resampling
    does) and refused beyond that. Negative or non-finite values are refused by ``refine`` itself."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.size == 0:
        return array.astype(np.float32)
    top = float(np.nanmax(array)) if array.dtype.kind == "f" else float(array.max())
    if array.dtype.kind in "iu":
        if top > 255:
            raise PromptError(f"{name} has values up to {top:g}: give probabilities 0..1 or a 0..255 picture.")
        return (array.astype(np.float32) / 255.0) if top > 1 else array.astype(np.float32)
    prob = array.astype(np.float32)
    if top > OVERSHOOT:
        raise PromptError(f"{name} holds floats up to {top:g}, not probabilities 0..1: divide it by its scale "
                          "(e.g. 100 for percent), or store a 0..255 picture as integers (uint8).")
    return np.minimum(prob, 1.0) if top > 1 else prob


def coarse_from_mask(mask, sigma: float = 2.0) -> np.ndarray:
    """A binary segment -> a probability map (Gaussian-smoothed), e.g. an existing Slicer segment."""
    return np.clip(ndimage.gaussian_filter(np.asarray(mask, np.float32), sigma), 0, 1)


def _kmedoids_pp(diss: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-medoids++ seeding (D^2 sampling over the dissimilarities, as k-means++)."""
    chosen = [int(rng.integers(len(diss)))]
    nearest = diss[chosen[0]].copy()
    for _ in range(1, k):
        weights = nearest ** 2
        total = weights.sum()
        pick = int(rng.choice(len(diss), p=weights / total)) if total > 0 else int(rng.integers(len(diss)))
        chosen.append(pick)
        nearest = np.minimum(nearest, diss[pick])
    return np.asarray(chosen, dtype=np.int64)


def positive_points(coarse, *, low: float = 0.15, relative: float = 0.4, k_range=(4, 6), gain: float = 0.1,
                    seed: int = 0, max_pixels: int = 1500) -> tuple[np.ndarray, int, dict[int, float], np.ndarray]:
    """-> (positives (k, 2) xy, k, inertia per k, thresholded region). Medoids are pixels of the region."""
    from scipy.spatial.distance import cdist

    try:
        import kmedoids
    except ImportError:
        raise SonoSAMError("The refiner needs the kmedoids package: pip install kmedoids==0.5.5") from None

    prob = _as_prob(coarse)
    region = prob > low
    if not region.any():
        raise PromptError(f"No pixel of the coarse map is above {low}: nothing to refine (is it a probability "
                          "map of the right class?).")
    region &= prob > relative * prob[region].max()
    rows, cols = np.nonzero(region)
    xy = np.column_stack([cols, rows]).astype(np.float64)
    rng = np.random.default_rng(seed)
    if len(xy) > max_pixels:  # the dissimilarity matrix is n^2: cluster an even random subset
        xy = xy[np.sort(rng.choice(len(xy), max_pixels, replace=False))]
    diss = cdist(xy, xy)
    inertia, medoids = {}, {}
    for k in range(k_range[0], k_range[1] + 1):
        if k > len(xy):
            break
        result = kmedoids.fasterpam(diss, _kmedoids_pp(diss, k, rng), n_cpu=1)  # seeded by our init
        inertia[k], medoids[k] = float(result.loss), np.asarray(result.medoids)
    if not medoids:
        return xy, len(xy), {}, region  # fewer pixels than k: every pixel is a positive
    ks = sorted(medoids)
    k = next((a for a, b in zip(ks, ks[1:]) if inertia[a] - inertia[b] < gain * inertia[a]), ks[-1])
    return xy[medoids[k]], k, inertia, region


def default_context(region: np.ndarray, margin: float | None = None) -> np.ndarray:
    """A ring around the coarse region: dilated by ``margin`` px (default: half its equivalent radius,
    at least 6 px). Used when no context anatomy is given."""
    if margin is None:
        margin = max(6.0, 0.5 * np.sqrt(region.sum() / np.pi))
    outside = ndimage.distance_transform_edt(~region)
    return outside <= margin


def _low_res_target(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask_to_logits(mask.astype(np.float32)) > 0).float()[None, None]


def _decode_points(sam, features, coords, labels):
    sparse, dense = sam.prompt_encoder(points=(coords[None], labels[None]), boxes=None, masks=None)
    low_res, _ = sam.mask_decoder(image_embeddings=features, image_pe=sam.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  multimask_output=False)
    return low_res


def _snap_inside(xy: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Each point outside ``allowed`` -> the nearest allowed pixel."""
    _, (near_r, near_c) = ndimage.distance_transform_edt(~allowed, return_indices=True)
    out = xy.copy()
    for i, (x, y) in enumerate(np.round(xy).astype(int)):
        y, x = np.clip(y, 0, allowed.shape[0] - 1), np.clip(x, 0, allowed.shape[1] - 1)
        if not allowed[y, x]:
            out[i] = (near_c[y, x], near_r[y, x])
    return out


def optimise_negatives(model, embedding: Embedding, positives: np.ndarray, target: np.ndarray, *, n: int,
                       steps: int = 100, lr: float = 4e-3, patience: int = 10, seed: int = 0, progress=None
                       ) -> tuple[np.ndarray, list[float]]:
    """The complementary problem (module doc): -> (negatives (n, 2) xy inside ``target``, losses).
    ``progress(step, steps)`` before each step (a server job's, which raises to stop it when cancelled)."""
    if not target.any():
        raise PromptError("The context has no pixel outside the coarse foreground: give a larger context mask.")
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(target)
    pick = rng.choice(len(rows), size=n, replace=len(rows) < n)
    start = np.column_stack([cols[pick], rows[pick]]).astype(np.float64)
    sam, size, device = model.sam, embedding.original_size, model.device
    side = float(model.spec.image_size)
    to_input = lambda xy: torch.as_tensor(model.transform.apply_coords(xy, size), dtype=torch.float32,  # noqa: E731
                                          device=device)
    fixed = to_input(np.asarray(positives, np.float64))                  # the positives, as negatives here
    moving = (to_input(start) / side).clone().requires_grad_(True)      # normalised: lr 4e-3 is in image sides
    labels = torch.as_tensor([0] * len(fixed) + [1] * n, dtype=torch.int, device=device)
    goal = _low_res_target(target).to(device)
    optimiser = torch.optim.AdamW([moving], lr=lr)
    losses, best, best_xy, stale = [], np.inf, moving.detach().clone(), 0
    features = embedding.features.clone()  # an inference-mode tensor cannot be saved for backward
    with torch.enable_grad():
        for step in range(steps):
            if progress is not None:
                progress(step, steps)
            coords = torch.cat([fixed, moving.clamp(0, 1) * side])
            loss = F.binary_cross_entropy_with_logits(_decode_points(sam, features, coords, labels), goal)
            (grad,) = torch.autograd.grad(loss, [moving])   # the model's own parameters get no gradient
            losses.append(float(loss.detach()))
            if losses[-1] < best - 1e-4:
                best, best_xy, stale = losses[-1], moving.detach().clamp(0, 1).clone(), 0
            else:
                stale += 1
                if stale >= patience:
                    break
            moving.grad = grad
            optimiser.step()
    input_xy = best_xy.cpu().numpy() * side
    scale = np.array([size[1] / embedding.input_size[1], size[0] / embedding.input_size[0]])
    return _snap_inside(input_xy * scale, target), losses


def _embedding(model_or_predictor, image, window=None):
    if hasattr(model_or_predictor, "embedding") and hasattr(model_or_predictor, "model"):  # a Predictor
        return model_or_predictor.model, model_or_predictor.embedding(image, window=window)
    return model_or_predictor, model_or_predictor.encode(image, window)


def check_clicks(model) -> None:
    """The refiner prompts with clicks: a model that takes none is refused (before any work, where callers can)."""
    if "point" not in model.spec.prompt_kinds:
        raise UnsupportedPromptError(f"{model.spec.name} takes no clicks; the refiner needs a click-capable model "
                                     "such as litemedsam_clicks or sam_vit_b.")


def refine(model_or_predictor, image, coarse, *, context=None, seed: int = 0, k_range=(4, 6),
           low: float = 0.15, relative: float = 0.4, steps: int = 100, lr: float = 4e-3, window=None,
           embedding: Embedding | None = None, progress=None) -> RefineResult:
    """Refine a coarse probability map of one structure on one 2D image (module doc). ``context``: a
    binary mask of the anatomy around it (None: a ring around the coarse region). Deterministic for a seed.
    ``progress(step, steps)``: called before each optimisation step of the negatives (an exception it raises,
    e.g. a cancelled job's, stops the refinement)."""
    prob = _as_prob(coarse)
    if prob.shape != np.asarray(image).shape[:2]:
        raise PromptError(f"The coarse map is {prob.shape[1]}x{prob.shape[0]} but the image is "
                          f"{np.asarray(image).shape[1]}x{np.asarray(image).shape[0]}: give it on the image's grid.")
    if embedding is None:
        model, embedding = _embedding(model_or_predictor, image, window)
    else:
        model = getattr(model_or_predictor, "model", model_or_predictor)
    check_clicks(model)
    positives, k, inertia, region = positive_points(prob, low=low, relative=relative, k_range=k_range, seed=seed)
    foreground = prob > low
    given_context = context
    if context is None:
        context = default_context(foreground)
    context = np.asarray(context, bool)
    if context.shape != prob.shape:
        raise PromptError(f"The context mask is {context.shape[1]}x{context.shape[0]}, not the image's "
                          f"{prob.shape[1]}x{prob.shape[0]}.")
    if given_context is None and not (context & ~foreground).any():
        raise PromptError("The coarse mask leaves no background around it on this image: nothing to contrast it "
                          "against. Give a coarse mask that leaves some background, or a context mask.")
    negatives, losses = optimise_negatives(model, embedding, positives, context & ~foreground, n=len(positives),
                                           steps=steps, lr=lr, seed=seed, progress=progress)
    points = np.concatenate([positives, negatives])
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    prediction = model.decode(embedding, Prompts(points=points, labels=labels), multimask=False)
    return RefineResult(prediction.mask, positives, negatives, prediction, k, inertia, region, losses)
