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


# PPN classes on Colin27, four shapes (compact, elongated, thin/curved, large), left side; label values: AAL
# (Thalamus_L 77, Putamen_L 73) and click_data's model-free tissue labels (203 ventricle, 201 white matter).
PPN_CLASSES = {"Thalamus_L": 77, "Putamen_L": 73, "Lateral_Ventricle_L": 203, "White_Matter_L": 201}


def ppn_labels() -> tuple[np.ndarray, np.ndarray]:
    """Colin27 T1 [k, j, i] and one label map: the AAL labels, overwritten by click_data's tissue references
    (201-204) except on the AAL deep grey nuclei (71-78; the thalamus and the ventricle reference share 25 voxels)."""
    from .train.click_data import _colin27_arrays, colin27_tissue

    t1, aal = _colin27_arrays()
    tissue = colin27_tissue()
    labels = aal.copy()
    where = (tissue > 0) & ~((aal >= 71) & (aal <= 78))
    labels[where] = tissue[where]
    return t1, labels


def ppn_split(lo: int = 12, hi: int = 152, stride: int = 1, gap: int = 2) -> dict[str, list[int]]:
    """Axial slice indices -> {"train", "val", "test"} by click_data's slab rule (slabs of 12: % 4 == 3 test,
    == 1 validation, else training); training slices within ``gap`` of a validation or test slice are dropped
    (neighbouring slices are near copies). Colin27 is one subject, so this holds out *slabs*, not subjects."""
    from .train.click_data import slab_part

    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i in range(lo, hi + 1, stride):
        parts[slab_part(i)].append(i)
    held = parts["val"] + parts["test"]
    parts["train"] = [i for i in parts["train"] if min(abs(i - h) for h in held) > gap]
    return parts


# Echo: the LV blood pool of click_data.blood_pools (model-free), the component centred in the LV's region.
ECHO_CLASS = "LV_blood_pool"


def echo_lv_pool(frame: np.ndarray) -> np.ndarray | None:
    """The blood-pool component whose centroid lies in the LV region (track.synthetic.LV_BOX, drawn on frame
    0 and holding the LV through the loop); None where the reference finds no such pool (on about 40 % of
    frames the dark LV cavity touches the sector edge or breaks up): such frames are unlabelled, not absent."""
    from .track.synthetic import LV_BOX
    from .train.click_data import blood_pools

    pools = blood_pools(frame)
    x0, y0, x1, y1 = LV_BOX
    for value in range(1, int(pools.max()) + 1):
        rows, cols = np.nonzero(pools == value)
        if x0 <= cols.mean() <= x1 and y0 <= rows.mean() <= y1:
            return pools == value
    return None


def echo_ppn_data(warps: int = 1, stride: int = 2, val_stride: int = 3) -> dict[str, list[tuple[str, np.ndarray, np.ndarray | None]]]:
    """The A4C loop's frames by click_data's time blocks (15 frames: % 4 == 3 test, == 1 validation, else
    training) as (name, frame, label map with 1 = LV blood pool, or None when unlabelled): every ``stride``-th
    training frame, every ``val_stride``-th validation frame, every test frame (encoding is the budget);
    training frames also warped by smooth random fields (click_data's warp, frame and mask together). One
    loop: held out by time block, not by loop."""
    from .track.synthetic import echo_frame
    from .train.click_data import _smooth_warp, slab_part

    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for index in range(120):
        part = slab_part(index, 15)
        if index % {"train": stride, "val": val_stride, "test": 1}[part]:
            continue
        frame = echo_frame(index)
        pool = echo_lv_pool(frame)
        label = None if pool is None else pool.astype(np.int64)
        parts[part].append((f"frame{index}", frame, label))
        if part == "train" and label is not None:
            rng = np.random.default_rng(index)
            for k in range(warps):
                image, warped = _smooth_warp(frame, label, rng)
                parts[part].append((f"frame{index}.warp{k}", image, warped))
    return parts
