"""The labelled cases the refiner, SAM^assist and prompt-predictor figures and tests use (docs/seeds.md):
Colin27 slices and structures, degraded coarse maps, the slice splits. The benchmarks are bench/seeds.py."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# AAL subcortical pairs (Hippocampus, Caudate, Putamen, Pallidum, Thalamus), chosen before any run:
SUBCORTICAL = (37, 38, 71, 72, 73, 74, 75, 76, 77, 78)


def largest_slice(labels: np.ndarray, label: int) -> int:
    """The axial slice (axis 0) where ``label`` covers the most voxels."""
    return int(np.argmax((labels == label).sum(axis=(1, 2))))


def degrade(mask: np.ndarray, seed: int = 0, erode: int = 2, blur: float = 3.0, noise: float = 0.1) -> np.ndarray:
    """A coarse probability map from a true mask: eroded, blurred, noisy (what a weak segmenter gives)."""
    rng = np.random.default_rng(seed)
    prob = ndimage.gaussian_filter(ndimage.binary_erosion(mask, iterations=erode).astype(np.float32), blur)
    prob = prob + rng.normal(0, noise, prob.shape).astype(np.float32)
    return np.clip(ndimage.gaussian_filter(prob, 1.0), 0, 1)


def colin27():
    from .data import aal_label_names, mri_colin27_paths
    from .io import read_volume
    from .volume import volume_window

    t1, aal = mri_colin27_paths()
    volume, labels = read_volume(t1).array, read_volume(aal).array
    return volume, labels, volume_window(volume), aal_label_names()


def echo_cases(model):
    """Frame 0 of the real A4C loop with LV and LA references: the base LiteMedSAM's box segmentation
    (boxes checked by eye), NOT expert labels: none exist for this loop."""
    import pydicom

    from .data import echo_a4c_path
    from .models import load_model
    from .prompts import Prompts
    from .track.synthetic import LA_BOX, LV_BOX

    rgb = pydicom.dcmread(echo_a4c_path()).pixel_array[0]
    frame = np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    base = load_model("litemedsam", device=model.device)
    embedding = base.encode(frame)
    return frame, {name: base.decode(embedding, Prompts(box=box), multimask=False).mask
                   for name, box in (("LV", LV_BOX), ("LA", LA_BOX))}


# SAM^assist structures (one per AAL pair above, left/right alternating), axial slices.
ASSIST_LABELS = (37, 72, 78)


def assist_slices(labels: np.ndarray, label: int, n_train: int, min_area: int = 60, test_stride: int = 3):
    """Training slices: ``n_train`` evenly spaced inside the structure's axial extent (the user's annotated
    slices); test slices: every ``test_stride``-th other slice at least 2 slices from any training slice."""
    areas = (labels == label).sum(axis=(1, 2))
    present = np.nonzero(areas >= min_area)[0]
    lo, hi = int(present[0]), int(present[-1])
    train = [int(round(v)) for v in np.linspace(lo, hi, n_train + 2)[1:-1]]
    test = [i for i in range(lo, hi + 1, test_stride)
            if areas[i] >= min_area and min(abs(i - t) for t in train) >= 2]
    return train, test


# PPN classes (one subject: held out by slab, see ppn_split), AAL values.
PPN_CLASSES = {"Thalamus_L": 77, "Putamen_R": 74, "Caudate_L": 71}


def ppn_split(lo: int = 12, hi: int = 152, stride: int = 2, slab: int = 12, gap: int = 3):
    """Axial slice indices -> (train, test). Colin27 is one subject, so this holds out *slabs*: slices in
    slabs ``index // 12`` with ``slab % 4 == 3`` are for testing; training slices are the others at least
    ``gap`` slices away from any test slice. Within-subject, so optimistic for a new subject."""
    slices = list(range(lo, hi + 1, stride))
    test = [i for i in slices if (i // slab) % 4 == 3]
    train = [i for i in slices if i not in test and min(abs(i - t) for t in test) >= gap]
    return train, test


