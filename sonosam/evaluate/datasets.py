"""Evaluation data: pairs of images and label maps, turned into 2D samples (one image + one binary mask).

Sources:

* a 2D image (PNG, JPEG, 2D NRRD/NIfTI/MHA, single-frame DICOM) with a 2D label map;
* a 3D volume (NRRD, NIfTI, MHA, DICOM series folder) with a label map in the same space (resampled onto the
  volume's grid with nearest neighbour where the two grids differ, in size or in placement), sliced along a numpy ``axis`` (0 = the
  slowest axis ``k``: axial slices of an axially acquired volume) keeping structures of at least
  ``min_area`` pixels in the slice;
* a cine loop (multi-frame DICOM, or a 2D+t NRRD/NIfTI; RGB frames accepted) with per-frame masks (a
  2D+t label map, or a folder of per-frame 2D masks in sorted order), one sample per frame.

Each distinct non-zero value of a label map is one structure (``labels=`` picks some); masks stored as
0/255 are therefore one structure. ``load_samples`` accepts a folder, a list file or a single pair:

* folder with ``images/`` and ``labels/`` (or ``masks/``; nnU-Net's ``imagesTr``/``labelsTr`` with the
  ``_0000`` channel suffix also work) matched by file stem;
* flat folder with ``NAME.ext`` next to ``NAME_label.ext`` / ``NAME_mask`` / ``NAME_seg`` /
  ``NAME-label`` / ``NAME.seg.nrrd``, the image also as ``NAME_image.ext`` / ``NAME_img.ext`` (pyradiomics' naming);
  an image with two label maps named like it is refused;
* a ``.csv``/``.txt`` list: one ``image,label`` pair per line (paths relative to the list; ``#`` comments).

Reading goes through the input gate ``sonosam.io.read_image`` (size budget before decoding, finite values,
16-bit and float pictures kept, Slicer ``.seg.nrrd`` labelmaps, multi-frame ultrasound DICOM as grayscale
frames); label maps of another size than their image are resampled only when both are 3D volumes with
geometry.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import DataFileError, InputImageError
from ..image import volume_window

__all__ = ["Sample", "read_array", "samples_from_arrays", "load_pair", "find_pairs", "load_samples",
           "colin27_samples"]

# NAME.seg.nrrd keeps ".seg" in its stem: Slicer's segmentation of NAME.ext, never the same stem as NAME.nrrd
_EXTENSIONS = (".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif",
               ".tiff", ".bmp", ".dcm", ".gz")
_LABEL_SUFFIXES = ("_label", "_labels", "_mask", "_seg", "_gt", "-label", "-labels", "-mask", "-seg", ".seg")
_IMAGE_SUFFIXES = ("_image", "_img", "-image")   # NAME_image.ext beside NAME_label.ext
_LABEL_DIRS = ("labels", "masks", "labelsTr", "labelsTs", "segmentations", "gt")
_IMAGE_DIRS = ("images", "imagesTr", "imagesTs", "image")


@dataclass
class Sample:
    """One evaluation item: a 2D image (H, W) or RGB frame (H, W, 3), the binary ground-truth mask (H, W),
    and where it came from. ``key`` identifies the image (not the structure), so several structures of
    one slice share one cached embedding in the Predictor. ``window``: the intensity window the model sees the
    image through (one per volume, as the tool shows a volume), or None for the image's own."""

    image: np.ndarray
    mask: np.ndarray
    name: str
    key: tuple
    label: int = 1
    meta: dict = field(default_factory=dict)
    window: tuple | None = None

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def _stem(path: Path) -> str:
    name = path.name
    for ext in _EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def read_array(path, role: str = "image") -> tuple[np.ndarray, bool, object]:
    """Read an image or label file (or a DICOM series folder, or a folder of 2D files stacked in name order)
    through the input gate (``sonosam.io.read_image``) -> (numpy array in [k, j, i] / [row, col] order, True
    if pixels are vectors such as RGB, the SimpleITK image for geometry or None). ``role="labels"`` keeps
    palette PNG indices as label values."""
    from ..io import read_image

    path = Path(path)
    if path.is_dir() and not _has_dicom_series(path):
        # a folder of 2D slices/frames (PNG masks...): stack them in name order
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataFileError(f"{path}: empty folder; expected a DICOM series or 2D images.")
        arrays = [read_array(p, role)[0] for p in files]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise DataFileError(f"{path}: the 2D files differ in size ({sorted(shapes)}); cannot stack them.")
        return np.stack(arrays), False, None
    loaded = read_image(path, role=role)
    array, vector = loaded.array, loaded.vector
    if loaded.format == "seg.nrrd" and array.ndim == 4:
        raise DataFileError(f"{path}: its segments overlap (stored in {array.shape[0]} layers); "
                            "evaluation needs one label per voxel: export a labelmap from Slicer.")
    if loaded.kind == "volume" and array.ndim - vector == 3 and array.shape[0] == 1:
        array = array[0]  # 2D image stored as a one-slice volume
    return array, vector, loaded.sitk_image


def _has_dicom_series(folder: Path) -> bool:
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def _spatial_shape(array: np.ndarray, vector: bool) -> tuple:
    return array.shape[:-1] if vector else array.shape


def _label_values(labelmap: np.ndarray, labels: Sequence[int] | None) -> list[int]:
    if labels is None:
        return [int(v) for v in np.unique(labelmap) if v != 0]
    return [int(v) for v in labels]


def samples_from_arrays(image: np.ndarray, labelmap: np.ndarray, *, labels: Sequence[int] | None = None,
                        axis: int = 0, min_area: int = 100, name: str | None = None, vector: bool | None = None,
                        kind: str = "auto", slices: Iterable[int] | None = None,
                        label_name: str | None = None) -> list[Sample]:
    """Samples from arrays already in memory (the Slicer module's path: volume and labelmap arrays).

    ``image``: (H, W), (H, W, 3), (K, H, W) or (K, H, W, 3); ``labelmap``: the matching integer array.
    ``vector``: whether the last image axis holds colour (guessed when ``None``: last axis of 3 or 4 and
    one more dimension than the label map). ``kind``: ``"volume"`` (slice along ``axis``), ``"cine"``
    (frames along axis 0) or ``"auto"`` (cine for RGB stacks). ``slices``: restrict to these indices.
    Structures smaller than ``min_area`` pixels in a slice/frame are skipped. ``name``: the source (a file path, a
    subject) that names the samples and keys their embeddings; two arrays evaluated together need two names. Left
    out, it is ``array <digest>`` with the digest of the image's pixels, so different arrays never share a key.
    ``label_name``: how errors about the label map name it (default: "NAME: the label map")."""
    image, labelmap = np.asarray(image), np.asarray(labelmap)
    if name is None:
        from ..predictor import image_key

        name = f"array {image_key(image)[:12]}"
    label_name = label_name or f"{name}: the label map"
    if vector is None:
        vector = image.ndim == labelmap.ndim + 1 and image.shape[-1] in (3, 4)
    if vector and image.shape[-1] == 4:
        image = image[..., :3]
    shape = _spatial_shape(image, vector)
    if labelmap.ndim >= 3 and labelmap.shape[-1] in (3, 4) and labelmap.ndim == image.ndim and not vector:
        raise InputImageError(f"{label_name} looks like a colour image {labelmap.shape}; "
                              "give an integer label map (one value per structure).")
    if tuple(labelmap.shape) != tuple(shape):
        raise InputImageError(f"{name}: image grid {tuple(shape)} and label map {labelmap.shape} differ.")
    if not (np.issubdtype(labelmap.dtype, np.integer) or labelmap.dtype == bool):
        if not np.array_equal(labelmap, np.round(labelmap)):
            raise InputImageError(f"{label_name} has non-integer values; give integer labels.")
        labelmap = labelmap.astype(np.int64)
    if labelmap.size and labelmap.min() < 0:
        raise InputImageError(f"{label_name} has negative values; give labels 0 (background) and up.")
    values = _label_values(labelmap, labels)
    if len(shape) == 2:
        samples = []
        for value in values:
            mask = labelmap == value
            if mask.sum() >= max(min_area, 1):
                samples.append(Sample(image, mask, f"{name}#label{value}", (name,), value, {"source": name}))
        return samples
    if len(shape) != 3:
        raise InputImageError(f"{name}: expected a 2D image, a 3D volume or a 2D+t loop; got grid {tuple(shape)}.")
    if kind == "auto":
        kind = "cine" if vector else "volume"
    if kind == "cine":
        axis = 0
    if vector and axis != 0:
        raise InputImageError(f"{name}: colour stacks can only be split along axis 0 (frames).")
    axis = int(axis) % 3
    lab = np.moveaxis(labelmap, axis, 0)
    img = np.moveaxis(image, axis, 0) if not vector else image
    n_slices = lab.shape[0]
    wanted = sorted(set(int(i) for i in slices)) if slices is not None else range(n_slices)
    # pixel count of every (slice, label) pair in one pass
    lab_int = lab.astype(np.int64, copy=False)
    top = int(lab_int.max()) + 1
    counts = np.bincount((np.arange(n_slices)[:, None] * top + lab_int.reshape(n_slices, -1)).ravel(),
                         minlength=n_slices * top).reshape(n_slices, top)
    what = "frame" if kind == "cine" else "slice"
    samples = []
    for index in wanted:
        if not 0 <= index < n_slices:
            raise InputImageError(f"{name}: {what} {index} is outside 0..{n_slices - 1}.")
        for value in values:
            if 0 < value < top and counts[index, value] >= max(min_area, 1):
                label = f"#label{value}"
                where = f"[{what}{index}]" if kind == "cine" else f"[axis{axis}:{index}]"
                samples.append(Sample(img[index], lab[index] == value, f"{name}{where}{label}",
                                      (name, axis, index), value,
                                      {"source": name, "axis": axis, what: index, "kind": kind}))
    return samples


def _align_label(label_array, label_image, image, name="The label map"):
    """The label map on the image grid where both carry geometry (resampled where the grids differ, in size or
    in space)."""
    from ..io import Geometry, Volume, labels_on_grid

    if image is None or label_image is None or image.GetDimension() != 3 or label_image.GetDimension() != 3 \
            or label_array.ndim != 3:
        return label_array  # 2D pictures carry no real geometry: a size mismatch is an error, not a resample
    return labels_on_grid(Volume(label_array, Geometry.from_image(label_image)), tuple(reversed(image.GetSize())),
                          Geometry.from_image(image), name)


def load_pair(image_path, label_path, *, labels: Sequence[int] | None = None, axis: int = 0,
              min_area: int = 100, kind: str = "auto", slices: Iterable[int] | None = None) -> list[Sample]:
    """Read one image (or volume, or loop) and its label map and split them into samples."""
    image_path, label_path = Path(image_path), Path(label_path)
    image, vector, image_sitk = read_array(image_path)
    labelmap, label_vector, label_sitk = read_array(label_path, role="labels")
    if label_vector:
        raise DataFileError(f"{label_path}: a colour image cannot be a label map; save integer labels "
                            "(0 = background, one value per structure).")
    labelmap = _align_label(labelmap, label_sitk, image_sitk, f"Label map {label_path}")
    if labelmap.shape != _spatial_shape(image, vector):
        raise DataFileError(f"{image_path} {_spatial_shape(image, vector)} and {label_path} {labelmap.shape} "
                            "have different sizes and no common geometry to resample on.")
    if kind == "auto" and image_path.suffix.lower() == ".dcm" and labelmap.ndim == 3:
        kind = "cine"  # a multi-frame DICOM is a loop
    name = str(image_path)
    samples = samples_from_arrays(image, labelmap, labels=labels, axis=axis, min_area=min_area, name=name,
                                  vector=vector, kind=kind, slices=slices, label_name=f"Label map {label_path}")
    volume = [s for s in samples if s.meta.get("kind") == "volume"]
    if volume and not vector and image.dtype != np.uint8:   # every slice through the volume's one window, as
        window = volume_window(image)                        # the Slicer module and `propagate` show it
        for sample in volume:
            sample.window = window
    return samples


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (p.is_file() or p.is_dir()))


def find_pairs(path) -> list[tuple[Path, Path]]:
    """(image, label map) pairs named by a folder or a list file (conventions in the module doc)."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file or folder.")
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".txt", ".lst", ".list"):
            raise DataFileError(f"{path}: give a folder, a .csv/.txt list of 'image,label' lines, "
                                "or an image together with its label map.")
        pairs = []
        with open(path, newline="", encoding="utf-8-sig") as handle:   # a BOM: saved by Excel or Notepad
            for row_number, row in enumerate(csv.reader(handle), 1):
                fields = [f.strip() for f in (row if len(row) > 1 else (row[0].split() if row else []))]
                fields = [f for f in fields if f]
                if not fields or fields[0].startswith("#") or fields[0].lower() == "image":
                    continue
                if len(fields) < 2:
                    raise DataFileError(f"{path}:{row_number}: expected 'image,label', got {row!r}.")
                image, label = (Path(f) if Path(f).is_absolute() else path.parent / f for f in fields[:2])
                pairs.append((image, label))
        if not pairs:
            raise DataFileError(f"{path}: the list has no 'image,label' lines.")
        return pairs
    for image_dir in _IMAGE_DIRS:
        for label_dir in _LABEL_DIRS:
            if (path / image_dir).is_dir() and (path / label_dir).is_dir():
                labels = {_stem(p): p for p in _image_files(path / label_dir)}
                pairs = []
                for image in _image_files(path / image_dir):
                    stem = _stem(image)
                    candidates = [stem, stem[:-5] if stem.endswith("_0000") else stem]
                    candidates += [stem + suffix for suffix in _LABEL_SUFFIXES]
                    match = next((labels[c] for c in candidates if c in labels), None)
                    if match is None:
                        raise DataFileError(f"{image}: no label map named like it in {path / label_dir}.")
                    pairs.append((image, match))
                if pairs:
                    return pairs
    files = _image_files(path)
    by_stem = {_stem(p): p for p in files}
    label_paths = set()
    pairs = []
    for stem, file in sorted(by_stem.items()):
        names = [stem] + [stem[:-len(s)] for s in _IMAGE_SUFFIXES if stem.endswith(s) and len(stem) > len(s)]
        found = list(dict.fromkeys(by_stem[name + suffix] for name in names for suffix in _LABEL_SUFFIXES
                                   if name + suffix in by_stem))
        if len(found) > 1:
            raise DataFileError(f"{file}: more than one label map is named like it ({', '.join(p.name for p in found)}); "
                                "keep one in the folder, or list the pairs in a .csv file of 'image,label' lines.")
        if found:
            pairs.append((file, found[0]))
            label_paths.add(found[0])
    if not pairs:
        raise DataFileError(f"{path}: found no image/label pairs. Use images/ + labels/ folders, "
                            "NAME.ext + NAME_label.ext files, or a list file of 'image,label' lines.")
    return [(i, l) for i, l in pairs if i not in label_paths]


def _thin(samples: list[Sample], max_samples: int | None) -> list[Sample]:
    if max_samples is None or len(samples) <= max_samples:
        return samples
    picks = np.unique(np.round(np.linspace(0, len(samples) - 1, max_samples)).astype(int))
    return [samples[i] for i in picks]


def load_samples(sources, *, labels: Sequence[int] | None = None, axis: int = 0, min_area: int = 100,
                 max_samples: int | None = None, kind: str = "auto",
                 slices: Iterable[int] | None = None, every_label: bool = False) -> list[Sample]:
    """All samples of one source or a list of them; a source is a folder, a list file, or an
    ``(image, label)`` tuple. A source without any structure is refused (``DataFileError``) rather than left
    out; with ``every_label`` (an evaluation's: each requested label scored on each source) so is a source
    without one of the requested ``labels`` (training takes what each source has). When there
    are more than ``max_samples``, an evenly spaced subset in source/slice/label order is kept
    (deterministic)."""
    if isinstance(sources, (str, Path, tuple)):  # one folder / list file, or one (image, label) pair
        sources = [sources]
    slices = list(slices) if slices is not None else None
    samples: list[Sample] = []
    where = " in the chosen slices" if slices is not None else ""
    for source in sources:
        pairs = [tuple(source)] if isinstance(source, tuple) else find_pairs(source)
        found: list[Sample] = []
        for image, label in pairs:
            found.extend(load_pair(image, label, labels=labels, axis=axis, min_area=min_area, kind=kind,
                                   slices=slices))
        named = f"{pairs[0][0]}" if isinstance(source, tuple) else f"{source}"
        if not found:
            raise DataFileError(f"No structure of at least {min_area} pixels found in {named}{where} "
                                f"(labels={list(labels) if labels is not None else 'all'}); lower --min-area or "
                                "check the label values.")
        missing = [v for v in dict.fromkeys(int(v) for v in labels or ()) if v not in {s.label for s in found}]
        if missing and every_label:   # a requested label is never silently left out of an evaluation
            raise DataFileError(f"{named}: no structure of label {', '.join(map(str, missing))} of at least "
                                f"{min_area} pixels{where}; drop it from the labels (--label), lower --min-area, "
                                "or check the label values.")
        samples.extend(found)
    return _thin(samples, max_samples)


COLIN27_LABELS = (7, 8, 85, 86)   # the four largest AAL regions: middle frontal and middle temporal gyri


def colin27_samples(labels: Sequence[int] | None = COLIN27_LABELS, *, axis: int = 0, min_area: int = 300,
                    max_samples: int | None = 10, slices: Iterable[int] | None = None) -> list[Sample]:
    """Slices of the real Colin27 T1 MRI with AAL labels (``sonosam.data.mri_colin27_paths``). Default
    structures: the four largest AAL regions (7/8 middle frontal gyri, 85/86 middle temporal gyri)."""
    from ..data import mri_colin27_paths

    t1, aal = mri_colin27_paths()
    return load_samples([(t1, aal)], labels=labels, axis=axis, min_area=min_area, max_samples=max_samples,
                        kind="volume", slices=slices)
