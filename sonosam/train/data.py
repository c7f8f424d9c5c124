"""Training data: samples (image + binary mask, ``sonosam.evaluate.Sample``) split so that validation and
test never see what training saw.

* ``split_by_source``: whole files (subjects) go to train or validation, never both.
* ``colin27_split``: the one labelled MRI here (Colin27 T1 + AAL atlas) split by *slab* and by
  *structure*: slices are grouped in slabs of consecutive indices along each axis; every fourth slab is
  for testing, the slab after a training slab pair for validation, and one AAL left/right pair in five is
  held out of training entirely (test structures). Test samples are test-slab slices of held-out structures, so no
  structure-slice (nor any view of a held-out structure) is seen in training.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import TrainingError
from ..evaluate.datasets import Sample, load_samples

__all__ = ["Split", "split_by_source", "colin27_split", "unique_images", "summarize"]


@dataclass
class Split:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    rule: str = ""

    def summary(self) -> dict:
        return {"rule": self.rule, "train": summarize(self.train), "val": summarize(self.val),
                "test": summarize(self.test)}


def summarize(samples: Sequence[Sample]) -> dict:
    """Counts for the metadata file: samples, distinct images, sources, labels."""
    return {"samples": len(samples), "images": len({s.key for s in samples}),
            "sources": sorted({str(s.meta.get("source", s.key[0])) for s in samples}),
            "labels": sorted({int(s.label) for s in samples}),
            "axes": dict(sorted(Counter(int(s.meta.get("axis", 0)) for s in samples).items()))}


def unique_images(samples: Sequence[Sample]) -> list[np.ndarray]:
    seen, out = set(), []
    for sample in samples:
        if sample.key not in seen:
            seen.add(sample.key)
            out.append(sample.image)
    return out


def split_by_source(samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Train/validation split by source file (subject): a stable hash of each file name decides, so
    adding files never moves the old ones. With a single source, the split is by slice/frame blocks
    of 8 instead (consecutive slices stay together)."""
    sources = sorted({str(s.meta.get("source", s.key[0])) for s in samples})
    if len(sources) >= 2:
        ranked = sorted(sources, key=lambda name: zlib.crc32(f"{seed}:{name}".encode()))
        n_val = min(len(sources) - 1, max(1, int(round(val_fraction * len(sources)))))
        val_sources = set(ranked[:n_val])
        rule = f"by source file: {n_val} of {len(sources)} files for validation"
        pick = lambda s: str(s.meta.get("source", s.key[0])) in val_sources  # noqa: E731
    else:
        period = max(2, int(round(1 / max(val_fraction, 1e-3))))
        rule = f"single source: blocks of 8 slices/frames, one block in {period} for validation"
        pick = lambda s: (_index(s) // 8) % period == period - 1  # noqa: E731
    train = [s for s in samples if not pick(s)]
    val = [s for s in samples if pick(s)]
    if not train or not val:
        raise TrainingError(f"Cannot split {len(samples)} samples into train and validation ({rule}); add data, or "
                            "give validation sources (--val-data).")
    return Split(train, val, [], rule)


def _index(sample: Sample) -> int:
    for key in ("slice", "frame"):
        if key in sample.meta:
            return int(sample.meta[key])
    return int(sample.key[-1]) if isinstance(sample.key[-1], (int, np.integer)) else 0


def _is_test_structure(label: int, period: int) -> bool:
    return ((int(label) - 1) // 2) % period == period // 2   # AAL: 2k+1 / 2k+2 are one left/right pair


COLIN27_AAL_RANGES = {0: (12, 152), 1: (22, 196), 2: (20, 160)}   # slices along each axis that hold AAL labels


def colin27_split(*, axes: Sequence[int] = (0, 1, 2), stride: int = 4, slab: int = 12, min_area: int = 150,
                  structure_period: int = 5, max_train: int | None = None, max_val: int | None = None,
                  max_test: int | None = None, ranges: dict[int, tuple[int, int]] | None = None) -> Split:
    """Colin27 T1 slices with AAL labels, split by slab and structure (module doc). One slice in
    ``stride`` along each of ``axes``; slabs of ``slab`` slice indices; slab ``s`` is test if ``s % 4 == 3``,
    validation if ``s % 4 == 1``, else training. ``max_*`` thin each part evenly (deterministic)."""
    from ..data import mri_colin27_paths

    t1, aal = mri_colin27_paths()
    ranges = ranges or COLIN27_AAL_RANGES
    train, val, test = [], [], []
    for axis in axes:
        lo, hi = ranges[axis]
        slices = list(range(lo, hi + 1, stride))
        samples = load_samples([(t1, aal)], axis=axis, min_area=min_area, kind="volume", slices=slices)
        for sample in samples:
            part = (int(sample.meta["slice"]) // slab) % 4
            held_out = _is_test_structure(sample.label, structure_period)
            if part == 3 and held_out:
                test.append(sample)
            elif part == 1 and not held_out:
                val.append(sample)
            elif part in (0, 2) and not held_out:
                train.append(sample)
    rule = (f"Colin27/AAL, axes {list(axes)}, every {stride}th slice, slabs of {slab}: slab%4==3 test, ==1 val, "
            f"else train; AAL pairs with (label-1)//2 % {structure_period} == {structure_period // 2} held out "
            f"(test only); min area {min_area} px")
    return Split(_thin(train, max_train), _thin(val, max_val), _thin(test, max_test), rule)


def _thin(samples: list[Sample], limit: int | None) -> list[Sample]:
    if limit is None or len(samples) <= limit:
        return samples
    picks = np.unique(np.round(np.linspace(0, len(samples) - 1, limit)).astype(int))
    return [samples[i] for i in picks]


def thin_images(samples: Sequence[Sample], max_images: int | None) -> list[Sample]:
    """Keep the samples of at most ``max_images`` distinct images, evenly spaced in sample order
    (deterministic); every structure of a kept image stays."""
    keys = list(dict.fromkeys(s.key for s in samples))
    if max_images is None or len(keys) <= max_images:
        return list(samples)
    picks = np.unique(np.round(np.linspace(0, len(keys) - 1, max_images)).astype(int))
    kept = {keys[i] for i in picks}
    return [s for s in samples if s.key in kept]
