"""Training and held-out data for the click decoder (issue 14): every source from a registry package or
made here, each with a held-out part split by subject, volume, loop or slab - never by slice.

Sources (``build_sources``):

* ``mri``: the Colin27 T1 MRI (Debian ``mricron-data``) with every AAL structure along all three axes
  (slabs of 12 slices: slab % 4 == 3 test / == 1 validation / else training; one AAL left/right pair in
  five is test-only, as ``colin27_split``), plus the model-free white matter and lateral ventricles of
  ``sonosam.references`` (helper ``volume``'s rules) on the same slices, split by the same slabs.
* ``mri_us``: the same MRI slices after ultrasound-style augmentation (``ultrasound_style``: a sector
  scan, depth attenuation, speckle, an acoustic shadow), same masks, same split.
* ``ct``: the head CT of Debian's ``invesalius-examples`` ("ProMED CT 0051", 108 x 256 x 256) with the
  model-free Hounsfield references of ``sonosam.references`` (skull, mandible rami, airway, sinuses, brain),
  shown through the volume's own window (``sonosam.image.volume_window``), as the Slicer module and
  propagation show a CT to the model; each 2D connected component a structure; one volume, so split by slabs
  (12 slices, 6 along the 108 axial ones) like Colin27.
* ``echo``: real B-mode frames of the apical 4-chamber loop (``pydicom-data``), split by time blocks of
  the one loop we have (there is no second echo loop in a registry package here); a model-free dark
  blood-pool reference (``blood_pools``) inside the scan sector; training frames also deformed by smooth
  random fields (frame and masks warped together, so the masks stay exact).

All references are model-free: no network made any label. Each is an approximation of the anatomy
(checked by eye on overlays), not an expert annotation; results on them say so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import DataFileError
from ..evaluate.datasets import Sample, samples_from_arrays
from .data import COLIN27_AAL_RANGES, Split, _is_test_structure, thin_images

__all__ = ["SOURCES", "build_sources", "embedding_images", "colin27_tissue", "ct_references", "blood_pools",
           "ultrasound_style", "slab_part"]

SOURCES = ("mri", "mri_us", "ct", "echo")
TISSUE_LABELS = {201: "White_Matter_L", 202: "White_Matter_R", 203: "Lateral_Ventricle_L", 204: "Lateral_Ventricle_R"}
CT_LABELS = {1: "Skull", 2: "Mandible_ramus_a", 3: "Mandible_ramus_b", 4: "Airway", 5: "Sinus_maxillary",
             6: "Sinus_frontal", 7: "Brain"}


def slab_part(index: int, slab: int = 12) -> str:
    """'test' / 'val' / 'train' for slice ``index`` (the slab rule shared by every volume source)."""
    part = (int(index) // slab) % 4
    return "test" if part == 3 else "val" if part == 1 else "train"


# ------------------------------------------------------------------------------------------------ MRI

@lru_cache(maxsize=1)
def _colin27_arrays() -> tuple[np.ndarray, np.ndarray]:
    from ..data import mri_colin27_paths
    from ..evaluate.datasets import read_array

    t1_path, aal_path = mri_colin27_paths()
    return read_array(t1_path)[0], read_array(aal_path)[0].astype(np.int64)


@lru_cache(maxsize=1)
def colin27_tissue() -> np.ndarray:
    """Model-free tissue labels on the Colin27 grid from ``sonosam.references`` (helper ``volume``'s rules,
    checked on overlays there): 201/202 white matter left/right, 203/204 lateral ventricles left/right."""
    from ..references import colin27_references

    refs = colin27_references(aal=False).references
    t1 = _colin27_arrays()[0]
    out = np.zeros(t1.shape, np.int64)
    for value, name in TISSUE_LABELS.items():
        mask = refs[name].mask
        if mask.shape != t1.shape:
            raise DataFileError(f"reference {name} {mask.shape} is not on the T1 grid {t1.shape}")
        out[mask] = value
    return out


def _mri_samples(stride: int, min_area: int) -> dict[str, list[Sample]]:
    from ..data import mri_colin27_paths

    t1, aal = _colin27_arrays()[:2]
    tissue = colin27_tissue()
    name = str(mri_colin27_paths()[0])
    parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for axis, (lo, hi) in COLIN27_AAL_RANGES.items():
        slices = list(range(lo, hi + 1, stride))
        for labelmap, kind in ((aal, "aal"), (tissue, "tissue")):
            for sample in samples_from_arrays(t1, labelmap, axis=axis, min_area=min_area, name=name,
                                              kind="volume", slices=slices):
                part = slab_part(sample.meta["slice"])
                if kind == "aal":   # the AAL pair rule of colin27_split: held-out pairs are test-only
                    held_out = _is_test_structure(sample.label, 5)
                    if held_out != (part == "test"):
                        continue
                sample.meta["structure"] = kind
                parts[part].append(sample)
    return parts


# ------------------------------------------------------------------------------------- ultrasound style

def ultrasound_style(image: np.ndarray, seed: int) -> np.ndarray:
    """An ultrasound-looking uint8 version of a grayscale slice (same grid, so the masks still fit): a
    sector scan from an apex above the image (outside it: black), intensity falling with depth, multiplicative
    speckle (Rayleigh-like, slightly blurred), a low-contrast haze and, half the time, an acoustic shadow
    (a dark angular band below a random depth). Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img, [1, 99.5])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    h, w = img.shape
    apex = (w * rng.uniform(0.4, 0.6), -h * rng.uniform(0.05, 0.25))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radius = np.hypot(xx - apex[0], yy - apex[1])
    angle = np.degrees(np.arctan2(xx - apex[0], yy - apex[1]))
    half_width = rng.uniform(35, 50)
    sector = (np.abs(angle) <= half_width) & (radius <= radius.max() * rng.uniform(0.95, 1.05))
    depth = (radius - radius.min()) / max(radius.max() - radius.min(), 1e-6)
    attenuation = np.exp(-rng.uniform(0.5, 1.6) * depth)
    speckle = rng.rayleigh(1.0, img.shape).astype(np.float32)
    speckle = ndimage.gaussian_filter(speckle, rng.uniform(0.6, 1.2))
    speckle /= speckle.mean()
    out = (0.08 + 0.85 * img) * attenuation * speckle + rng.uniform(0.0, 0.08)
    if rng.random() < 0.5:
        centre, width = rng.uniform(-half_width * 0.7, half_width * 0.7), rng.uniform(4, 10)
        start = rng.uniform(0.3, 0.7) * radius.max()
        out = np.where((np.abs(angle - centre) < width) & (radius > start), out * rng.uniform(0.15, 0.4), out)
    out = np.where(sector, out, 0)
    return np.clip(out * 255 / max(np.percentile(out[sector], 99.5), 1e-6), 0, 255).astype(np.uint8)


def _ultrasound_copies(parts: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for part, samples in parts.items():
        images: dict[tuple, np.ndarray] = {}
        out[part] = []
        for s in samples:
            if s.key not in images:
                # the key names the volume by its path: seed from the file name, so that every checkout makes the
                # same copies
                stable = tuple(Path(k).name if isinstance(k, str) else k for k in s.key)
                seed = int.from_bytes(hashlib.sha256(repr(stable).encode()).digest()[:4], "little")
                images[s.key] = ultrasound_style(s.image, seed)
            image = images[s.key]
            visible = s.mask & (image > 0)
            if visible.sum() < 0.8 * s.mask.sum():   # mostly outside the sector: nothing to click on
                continue
            out[part].append(Sample(image, s.mask, s.name + "[us]", s.key + ("us",), s.label,
                                    {**s.meta, "source": s.meta["source"] + "#us"}))
    return out


# ------------------------------------------------------------------------------------------------- CT

@lru_cache(maxsize=1)
def ct_references() -> tuple[np.ndarray, np.ndarray]:
    """The InVesalius head CT in Hounsfield units [k, j, i] and its model-free reference labels (``CT_LABELS``)
    from ``sonosam.references.ct_head_references`` (helper ``volume``'s HU rules)."""
    from ..references import ct_head_references

    subject = ct_head_references()
    hu = np.asarray(subject.volume.array)
    labels = np.zeros(hu.shape, np.int64)
    for value, name in CT_LABELS.items():
        labels[subject.references[name].mask] = value
    return hu, labels


def _component_samples(image: np.ndarray, labels: np.ndarray, name: str, key: tuple, meta: dict,
                       min_area: int, max_per_class: int = 3) -> list[Sample]:
    """One sample per 2D connected component (largest ``max_per_class`` of each class, area >= min_area)."""
    out = []
    for value in np.unique(labels):
        if value == 0:
            continue
        parts, count = ndimage.label(labels == value)
        if not count:
            continue
        sizes = np.bincount(parts.ravel())[1:]
        for rank, index in enumerate(np.argsort(sizes)[::-1][:max_per_class]):
            if sizes[index] < min_area:
                break
            out.append(Sample(image, parts == index + 1, f"{name}#label{value}.{rank}", key, int(value),
                              {**meta, "component": rank}))
    return out


def _ct_samples(stride: int, min_area: int) -> dict[str, list[Sample]]:
    from ..image import to_uint8_rgb, volume_window

    hu, labels = ct_references()
    # the window the product gives the model (the click sets once clipped it to -100..300 HU: docs/training.md,
    # "CT shown as the product shows it")
    window = volume_window(hu)
    parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    name = "invesalius:Cranium.inv3"
    for axis in range(3):
        img_axis, lab_axis = np.moveaxis(hu, axis, 0), np.moveaxis(labels, axis, 0)
        step = max(1, stride // 2) if axis == 0 else stride   # 108 axial slices vs 256 on the other axes
        slab = 6 if axis == 0 else 12
        for index in range(0, img_axis.shape[0], step):
            if not lab_axis[index].any():
                continue
            image = np.ascontiguousarray(to_uint8_rgb(img_axis[index], window=window)[..., 0])
            meta = {"source": name, "axis": axis, "slice": index, "kind": "volume"}
            found = _component_samples(image, lab_axis[index], f"{name}[axis{axis}:{index}]",
                                       (name, axis, index), meta, min_area)
            parts[slab_part(index, slab)].extend(found)
    return parts


# ----------------------------------------------------------------------------------------------- echo

def blood_pools(frame: np.ndarray, min_area: int = 250) -> np.ndarray:
    """Model-free blood-pool reference on a B-mode frame: inside the scan sector (non-black pixels, filled),
    dark regions of the smoothed frame (below 0.45 x the sector's 60th percentile), opened, each component
    of at least ``min_area`` pixels that does not touch the sector's edge; labels 1..n by area."""
    frame = np.asarray(frame, np.float32)
    sector = ndimage.binary_fill_holes(ndimage.binary_opening(frame > 8, iterations=2))
    sector = ndimage.binary_erosion(sector, iterations=6)
    smooth = ndimage.gaussian_filter(frame, 3)
    dark = sector & (smooth < 0.45 * np.percentile(smooth[sector], 60))
    dark = ndimage.binary_opening(dark, iterations=3)
    parts, count = ndimage.label(dark)
    edge = set(np.unique(parts[~ndimage.binary_erosion(sector, iterations=2) & (parts > 0)]).tolist())
    sizes = np.bincount(parts.ravel())
    keep = [i for i in range(1, count + 1) if sizes[i] >= min_area and i not in edge]
    out = np.zeros(frame.shape, np.int64)
    for rank, index in enumerate(sorted(keep, key=lambda i: -sizes[i]), 1):
        out[parts == index] = rank
    return out


def _smooth_warp(frame: np.ndarray, labels: np.ndarray, rng: np.random.Generator, amplitude: float = 8.0):
    """Warp a frame and its labels by one smooth random displacement field (exact labels by construction)."""
    import cv2

    h, w = frame.shape
    field = [cv2.resize(rng.standard_normal((4, 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
             * amplitude for _ in range(2)]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = gx + field[0], gy + field[1]
    warped = cv2.remap(frame, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    warped_labels = cv2.remap(labels.astype(np.float32), mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    return warped, warped_labels.astype(np.int64)


def _echo_samples(stride: int, min_area: int, warps: int = 1) -> dict[str, list[Sample]]:
    from ..track.synthetic import echo_frame

    parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    name = "pydicom-data:color3d_jpeg_baseline.dcm"
    for index in range(0, 120, stride):
        frame = echo_frame(index)
        part = slab_part(index, 15)    # blocks of 15 frames (half a second) along the loop
        labels = blood_pools(frame, min_area)
        meta = {"source": name, "frame": index, "kind": "cine"}
        parts[part].extend(_component_samples(frame, labels, f"{name}[frame{index}]", (name, index), meta,
                                              min_area, max_per_class=1))
        if part == "train":
            rng = np.random.default_rng(index)
            for k in range(warps):
                image, warped = _smooth_warp(frame, labels, rng)
                parts[part].extend(_component_samples(image, warped, f"{name}[frame{index}][warp{k}]",
                                                      (name, index, "warp", k), {**meta, "warp": k}, min_area,
                                                      max_per_class=1))
    return parts


def embedding_images(echo_warps: int = 1, mri_stride: int = 8) -> dict[str, list[np.ndarray]]:
    """Unlabelled images for a student's embedding stage (it needs no labels), beyond ``build_sources``' training
    images and never from a validation or test part: every frame of the A4C loop's training blocks not already
    there (``build_sources`` takes every 3rd) and ``echo_warps`` smooth warps of each training-block frame; the
    frames of the PLAX loop (deid-data; a second loop, in no held-out set of ``build_sources``); and
    ultrasound-style copies of Colin27 training-slab slices (every ``mri_stride``-th, offset from
    ``build_sources``' stride-3 slices by one)."""
    from ..data import echo_plax_path
    from ..io import read_cine
    from ..track.synthetic import echo_frame

    echo, mri_us = [], []
    for index in range(120):
        if slab_part(index, 15) != "train":
            continue
        frame = echo_frame(index)
        if index % 3:
            echo.append(frame)
        rng = np.random.default_rng([index, 7])
        echo.extend(_smooth_warp(frame, np.zeros(frame.shape, np.int64), rng)[0] for _ in range(echo_warps))
    echo.extend(np.ascontiguousarray(frame) for frame in read_cine(echo_plax_path()).frames)
    t1 = _colin27_arrays()[0]
    for axis, (lo, hi) in COLIN27_AAL_RANGES.items():
        for index in range(lo + 1, hi + 1, mri_stride):
            if slab_part(index) == "train":
                image = np.ascontiguousarray(np.take(t1, index, axis=axis))
                mri_us.append(ultrasound_style(image, seed=1000 * axis + index))
    return {"echo": echo, "mri_us": mri_us}


# -------------------------------------------------------------------------------------------- together

@dataclass
class SourceSplit:
    name: str
    split: Split
    description: str


# Images per part (train, val, test) kept of each source (evenly spaced, every structure of a kept image
# stays): encoding costs 2-15 s per image on the shared 2-core machine, so the image count is the budget.
IMAGE_BUDGET = {"mri": (None, 6, None), "mri_us": (12, 4, 12), "ct": (30, 4, None), "echo": (None, 4, None)}


def build_sources(sources=SOURCES, *, mri_stride: int = 3, ct_stride: int = 8, echo_stride: int = 3,
                  min_area: int = 150, budget: dict | None = IMAGE_BUDGET) -> dict[str, SourceSplit]:
    """Every requested source as train / val / test sample lists (module doc), thinned to ``budget``
    images per part (None: all)."""
    out = _build(sources, mri_stride, ct_stride, echo_stride, min_area)
    for name, source in out.items():
        limits = (budget or {}).get(name, (None, None, None))
        split = source.split
        split.train, split.val, split.test = (thin_images(part, limit) for part, limit in
                                              zip((split.train, split.val, split.test), limits))
    return out


def _build(sources, mri_stride, ct_stride, echo_stride, min_area) -> dict[str, SourceSplit]:
    out: dict[str, SourceSplit] = {}
    mri = None
    if "mri" in sources or "mri_us" in sources:
        mri = _mri_samples(mri_stride, min_area)
    if "mri" in sources:
        out["mri"] = SourceSplit("mri", Split(mri["train"], mri["val"], mri["test"], "Colin27 slabs of 12 (AAL pairs held out)"),
                                 "Colin27 T1 + AAL structures + model-free white matter / lateral ventricles")
    if "mri_us" in sources:
        us = _ultrasound_copies(mri)
        out["mri_us"] = SourceSplit("mri_us", Split(us["train"], us["val"], us["test"], "as mri"),
                                    "Colin27 slices with ultrasound-style augmentation (sector, speckle, "
                                    "attenuation, shadow)")
    if "ct" in sources:
        ct = _ct_samples(ct_stride, min_area)
        out["ct"] = SourceSplit("ct", Split(ct["train"], ct["val"], ct["test"], "one CT volume, slabs of 12 "
                                            "(6 axial) slices: %4==3 test, ==1 val"),
                                "InVesalius head CT, model-free bone / brain / air-space references")
    if "echo" in sources:
        echo = _echo_samples(echo_stride, min_area)
        out["echo"] = SourceSplit("echo", Split(echo["train"], echo["val"], echo["test"],
                                                "one A4C loop, blocks of 15 frames: %4==3 test, ==1 val"),
                                  "real A4C echo frames (pydicom-data), model-free blood-pool references; "
                                  "training frames also warped by smooth random fields")
    return out
