"""Held-out evaluation with cached embeddings: the evaluation harness (``sonosam.evaluate.evaluate``,
same click protocol) run through a predictor that takes embeddings from the training cache."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..evaluate.datasets import Sample
from ..evaluate.harness import evaluate
from ..models import Embedding
from ..prompts import as_prompts

__all__ = ["CachedPredictor", "evaluate_cached", "compare_table", "paired_difference", "difference_table"]


class CachedPredictor:
    """``Predictor``-like: ``predict(image, ...)`` decodes with ``model`` from ``store``'s embeddings."""

    def __init__(self, model, store):
        self.model, self.store = model, store
        self.spec = model.spec
        self._last = None

    @property
    def encoder_calls(self) -> int:
        return getattr(self.store, "encoder_calls", 0)

    def predict(self, image, prompts=None, *, points=None, labels=None, box=None, mask_logits=None,
                multimask=False, key=None, window=None):
        prompts = as_prompts(prompts, points=points, labels=labels, box=box, mask_logits=mask_logits)
        ident = (id(image), key)
        if self._last is None or self._last[0] != ident:
            cached = self.store.get(image, window)
            embedding = Embedding(cached.features[None].to(self.model.device), cached.original_size,
                                  cached.input_size, self.model.model_id)
            self._last = (ident, embedding)
        return self.model.decode(self._last[1], prompts, multimask=multimask)


def evaluate_cached(model, store, samples: Sequence[Sample], n_clicks: int = 5, box: bool = True,
                    progress: bool = False, name: str | None = None, per_sample: bool = False,
                    local: bool = False) -> dict:
    """Mean Dice after clicks 1..n (centroid start, clicks in the error region, as ``evaluate``; ``local``: with
    its ``local_corrections``, as the Slicer effect corrects) and with the tight box; keys ``dice@K``, ``box``, ``clicks``, ``samples``, ``errors`` (``per_sample``: also
    ``per_sample`` = {key: the Dice of every sample, in order}, for paired comparisons)."""
    predictor = CachedPredictor(model, store)
    out: dict = {"clicks": n_clicks, "samples": len(samples)}
    each: dict[str, list[float]] = {}
    if "point" in model.spec.prompt_kinds:
        result = evaluate(predictor, samples, n_clicks=n_clicks, start="point", progress=progress, name=name,
                          local_corrections=local)
        curves = np.array(result.curves, dtype=float)
        for k in range(n_clicks):
            out[f"dice@{k + 1}"] = float(np.nanmean(curves[:, k])) if len(curves) else math.nan
            each[f"dice@{k + 1}"] = curves[:, k].tolist() if len(curves) else []
        out["errors"] = len(result.errors)
    else:
        for k in range(n_clicks):
            out[f"dice@{k + 1}"] = math.nan
    if box:
        result = evaluate(predictor, samples, n_clicks=1, start="box", progress=progress, name=name)
        each["box"] = [c[0] for c in result.curves]
        out["box"] = float(np.nanmean(each["box"])) if result.curves else math.nan
    if per_sample:
        out["per_sample"] = each
    return out


def compare_table(rows: dict[str, dict], clicks=(1, 3, 5)) -> str:
    """Markdown table: model x (Dice at the given clicks, box)."""
    head = "| model | " + " | ".join(f"{k} click{'s' if k > 1 else ''}" for k in clicks) + " | box |"
    lines = [head, "|" + "---|" * (len(clicks) + 2)]
    for name, m in rows.items():
        cells = [f"{m.get(f'dice@{k}', math.nan):.3f}" for k in clicks] + [f"{m.get('box', math.nan):.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_difference(values: Sequence[float], reference: Sequence[float], resamples: int = 5000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values - reference`` (the same samples, in order) and its paired bootstrap 95 % interval."""
    diff = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(diff), (resamples, len(diff)))
    means = np.nanmean(diff[picks], axis=1)
    return float(np.nanmean(diff)), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def difference_table(rows: dict[str, dict], reference: str, clicks=(1, 3, 5)) -> str:
    """Markdown table: each row minus ``reference`` (rows from ``evaluate_cached(per_sample=True)``), mean
    difference [paired bootstrap 95 % interval] at the given clicks and with the box."""
    keys = [f"dice@{k}" for k in clicks] + ["box"]
    head = f"| model - {reference} | " + " | ".join(f"{k} click{'s' if k > 1 else ''}" for k in clicks) + " | box |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    base = rows[reference]["per_sample"]
    for name, m in rows.items():
        if name != reference:
            cells = ["{:+.3f} [{:+.3f}, {:+.3f}]".format(*paired_difference(m["per_sample"][k], base[k])) for k in keys]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
