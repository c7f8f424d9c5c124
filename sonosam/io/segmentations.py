"""Segmentations: `Segment` / `Segmentation`, `write_segmentation`, `read_segmentation` for `.seg.nrrd` as
Slicer writes it (through slicerio), plain labelmaps (`.nii.gz`, `.nrrd`, `.mha`) and 2D `.png` masks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataFileError, InputImageError
from .atomic import PathLike, atomic_output, file_suffix
from .geometry import Geometry
from .volumes import Volume, _not_3d_message, read_volume, write_volume

# Slicer's first GenericAnatomyColors entries, so that default segments look as they do in Slicer.
DEFAULT_COLORS: tuple[tuple[float, float, float], ...] = tuple(
    (r / 255, g / 255, b / 255) for r, g, b in [
        (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
        (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0)])


@dataclass
class Segment:
    """One structure: its name, display colour (0-1 floats, as Slicer stores them), label value and layer."""

    name: str
    color: tuple[float, float, float] | None = None
    label: int | None = None  # None: assigned when written (1, 2, ... in order)
    layer: int = 0
    id: str | None = None

    def __post_init__(self):
        if self.color is not None:
            color = tuple(float(c) for c in self.color)
            if len(color) != 3 or min(color) < 0:
                raise InputImageError(f"Segment {self.name!r}: a colour is (r, g, b); got {self.color}.")
            if max(color) > 1:  # 0-255 given
                color = tuple(c / 255.0 for c in color)
            self.color = color
        self.label = None if self.label is None else int(self.label)
        self.layer = int(self.layer)

    @classmethod
    def coerce(cls, spec: Segment | dict[str, Any] | str) -> Segment:
        if isinstance(spec, Segment):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        if not isinstance(spec, dict) or "name" not in spec:
            raise InputImageError(f"A segment is described by its name or a dict with a 'name' (and optionally "
                                  f"'color', 'label', 'id'); got {spec!r}.")
        known = {k: spec[k] for k in ("name", "color", "label", "layer", "id") if k in spec}
        return cls(**known)


@dataclass
class Segmentation:
    """Labels on a voxel grid: `labelmap` [k, j, i], or [layer, k, j, i] when segments overlap (as in Slicer)."""

    labelmap: np.ndarray
    geometry: Geometry
    segments: list[Segment]

    def mask(self, segment: str | int) -> np.ndarray:
        """Boolean [k, j, i] mask of a segment given by name or index in `segments`."""
        if isinstance(segment, str):
            found = [s for s in self.segments if s.name == segment or s.id == segment]
            if not found:
                raise KeyError(f"No segment named {segment!r}; there are {[s.name for s in self.segments]}.")
            seg = found[0]
        else:
            seg = self.segments[segment]
        layers = self.labelmap if self.labelmap.ndim == 4 else self.labelmap[np.newaxis]
        return layers[seg.layer] == seg.label


def _label_dtype(max_label: int):
    return np.uint8 if max_label <= 255 else np.uint16 if max_label <= 65535 else np.int32


def _as_layers(labelmap_or_masks, segments) -> tuple[np.ndarray, list[Segment]]:
    """Normalise the input to ([layer, k, j, i] integer labels, segments with label and layer set)."""
    if isinstance(segments, (str, dict, Segment)):   # one segment's description, not in a list
        segments = [segments]
    specs = [Segment.coerce(s) for s in segments] if segments is not None else None
    is_masks = isinstance(labelmap_or_masks, (list, tuple)) or (
        isinstance(labelmap_or_masks, np.ndarray) and labelmap_or_masks.dtype == bool and labelmap_or_masks.ndim == 4)
    if is_masks:
        masks = [np.asarray(m) for m in labelmap_or_masks]
        masks = [m[np.newaxis] if m.ndim == 2 else m for m in masks]
        if not masks or any(m.ndim != 3 or m.shape != masks[0].shape for m in masks):
            raise InputImageError(f"Masks must be 2D or 3D arrays of one shape; got shapes {[m.shape for m in masks]}.")
        if any(m.dtype.kind not in "bui" or m.max(initial=0) > 1 or m.min(initial=0) < 0 for m in masks):
            raise InputImageError("Masks must be boolean (or 0/1) arrays; pass a labelmap array for label values.")
        if specs is None:
            specs = [Segment(f"Segment_{i + 1}", label=i + 1) for i in range(len(masks))]
        if len(specs) != len(masks):
            raise InputImageError(f"{len(masks)} masks but {len(specs)} segment descriptions; give one per mask.")
        labels = [s.label if s.label is not None else i + 1 for i, s in enumerate(specs)]
        if len(set(labels)) != len(labels) or min(labels) < 1:
            raise InputImageError(f"Segment label values must be distinct and positive; got {labels}.")
        layers: list[np.ndarray] = []
        dtype = _label_dtype(max(labels))
        out = []
        for mask, spec, label in zip(masks, specs, labels):
            mask = mask.astype(bool)
            layer = next((i for i, lay in enumerate(layers) if not lay[mask].any()), len(layers))
            if layer == len(layers):
                layers.append(np.zeros(mask.shape, dtype))
            layers[layer][mask] = label
            out.append(Segment(spec.name, spec.color, label, layer, spec.id))
        return np.stack(layers), out
    array = np.asarray(labelmap_or_masks)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "ui":
        raise InputImageError(f"A labelmap must hold integer (or boolean) values; got {array.dtype}. "
                              f"Threshold or round it first.")
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise InputImageError(_not_3d_message(array.shape) + " For several overlapping masks pass a list of masks.")
    if array.size and array.min() < 0:
        raise InputImageError("A labelmap cannot hold negative label values.")
    present = [int(v) for v in np.unique(array) if v != 0]
    if specs is None:
        specs = [Segment(f"Segment_{v}", label=v) for v in present]
    specs = [s if s.label is not None else Segment(s.name, s.color, i + 1, 0, s.id) for i, s in enumerate(specs)]
    missing = sorted(set(present) - {s.label for s in specs})
    if missing:
        raise InputImageError(f"Label values {missing} in the labelmap have no segment description; add them to "
                              f"`segments` (name, color, label) or set those voxels to 0.")
    max_label = max([s.label for s in specs] + present + [1])
    return array.astype(_label_dtype(max_label), copy=False)[np.newaxis], [
        Segment(s.name, s.color, s.label, 0, s.id) for s in specs]


_SEG_FORMATS = (".seg.nrrd", ".nrrd", ".nii.gz", ".nii", ".mha", ".png")


def write_segmentation(path: PathLike, labelmap_or_masks, geometry: Geometry | None = None,
                       segments: Sequence[dict | Segment] | None = None, *, overwrite: bool = False) -> Path:
    """Write segments to `.seg.nrrd` (Slicer's segmentation file, via slicerio), a plain labelmap
    (`.nii.gz`, `.nii`, `.nrrd`, `.mha`) or a 2D `.png` mask.

    `labelmap_or_masks` is an integer labelmap [k, j, i] (or [y, x]; 0 = background), a boolean mask, or a
    list of boolean masks, one per segment (they may overlap; `.seg.nrrd` then stores layers as Slicer
    does). `segments`: [{"name", "color" (0-1 or 0-255), "label"}, ...]; defaults to Segment_<label>.
    A one-segment `.png` is written 0/255 so that it is visible; several segments keep their label values."""
    kind = file_suffix(path)
    if kind not in _SEG_FORMATS:
        raise DataFileError(f"Cannot write a segmentation to {path}: use one of {', '.join(_SEG_FORMATS)}.")
    geometry = geometry or Geometry()
    layers, segs = _as_layers(labelmap_or_masks, segments)
    for index, seg in enumerate(segs):
        if seg.color is None:
            seg.color = DEFAULT_COLORS[index % len(DEFAULT_COLORS)]
    if kind == ".seg.nrrd":
        import slicerio

        voxels = layers[0] if layers.shape[0] == 1 else layers
        used_ids: set[str] = set()
        header_segments = []
        for index, seg in enumerate(segs):
            seg_id = check_name(seg.id or f"Segment_{index + 1}", "segment ID")
            check_name(seg.name)
            if seg_id in used_ids:
                raise InputImageError(f"Segment ID {seg_id!r} is used twice.")
            used_ids.add(seg_id)
            nonzero = np.nonzero(layers[seg.layer] == seg.label)  # k, j, i
            extent = [int(v) for axis in reversed(nonzero) for v in (axis.min(), axis.max())] if nonzero[0].size \
                else [0, -1, 0, -1, 0, -1]
            header_segments.append({"id": seg_id, "name": seg.name, "nameAutoGenerated": False,
                                    "color": [round(c, 6) for c in seg.color], "colorAutoGenerated": False,
                                    "labelValue": seg.label, "layer": seg.layer, "extent": extent})
        # slicerio's writer takes i, j, k (Fortran) order; ours is k, j, i.
        ijk = voxels.transpose(2, 1, 0) if voxels.ndim == 3 else voxels.transpose(0, 3, 2, 1)
        segmentation = {"voxels": ijk, "ijkToLPS": geometry.ijk_to_lps(), "segments": header_segments,
                        "containedRepresentationNames": ["Binary labelmap"],
                        "masterRepresentation": "Binary labelmap", "referenceImageExtentOffset": [0, 0, 0]}
        with atomic_output(path, overwrite) as tmp:
            slicerio.write_segmentation(str(tmp), segmentation)
        return Path(path)
    if layers.shape[0] > 1:
        raise InputImageError(f"The segments overlap, which {kind} cannot store (one label per voxel); write "
                              f".seg.nrrd, or one file per segment.")
    labelmap = layers[0]
    if kind == ".png":
        if labelmap.shape[0] != 1:
            raise InputImageError(f"A .png holds one 2D mask; this labelmap has {labelmap.shape[0]} slices "
                                  f"(shape {labelmap.shape}). Write .nii.gz or .seg.nrrd instead.")
        if labelmap.max(initial=0) > 255:
            raise InputImageError("A .png mask holds label values up to 255; write .nii.gz or .seg.nrrd instead.")
        from PIL import Image

        image2d = labelmap[0].astype(np.uint8)
        if len(segs) == 1:
            image2d = np.where(image2d == segs[0].label, 255, 0).astype(np.uint8)
        with atomic_output(path, overwrite) as tmp:
            Image.fromarray(image2d, mode="L").save(tmp, format="PNG")
        return Path(path)
    return write_volume(Volume(labelmap, geometry), path, overwrite=overwrite)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_NAME_LENGTH = 200


def check_name(name, what: str = "segment name") -> str:
    """A name that reaches a file header (segment, object, label names): text, not empty, no control
    characters (a newline would start a new header field in .seg.nrrd / .seq.nrrd), ASCII (NRRD headers are),
    and not the separator Slicer's segment header uses between fields ('|'; ':' inside a value is fine)."""
    if not isinstance(name, str):
        raise InputImageError(f"The {what} must be text; got {type(name).__name__} {name!r}.")
    if not name.strip():
        raise InputImageError(f"The {what} is empty; give a name such as 'LV'.")
    bad = _CONTROL.search(name)
    if bad:
        raise InputImageError(f"The {what} {name!r} contains a control character ({bad.group()!r}), which would "
                              f"corrupt the file header; use letters, digits, spaces and punctuation.")
    if not name.isascii():
        raise InputImageError(f"The {what} {name!r} has non-ASCII characters; NRRD file headers (.seg.nrrd, .seq.nrrd) "
                              f"hold ASCII only, so spell it without accents or symbols.")
    if "|" in name:
        raise InputImageError(f"The {what} {name!r} contains '|', which Slicer's segmentation header uses as a "
                              f"separator; choose another character.")
    if len(name) > MAX_NAME_LENGTH:
        raise InputImageError(f"The {what} is {len(name)} characters long; keep it under {MAX_NAME_LENGTH}.")
    return name


def check_seg_header(path: PathLike) -> dict | None:
    """The one check of a `.seg.nrrd` header: the header dict when the file is a Slicer segmentation (it has
    Segment0_ fields), None for a plain NRRD, and a one-line error when the header is unreadable or its
    segment fields are inconsistent. Non-NRRD files are None."""
    path = Path(path)
    with open(path, "rb") as handle:
        if handle.read(4) != b"NRRD":
            if file_suffix(path) == ".seg.nrrd":
                raise DataFileError(f"{path} is not a NRRD file (no NRRD signature); it is damaged or another "
                                    f"kind of file.")
            return None
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception as error:  # noqa: BLE001 - pynrrd raises several types for a damaged header
        raise DataFileError(f"{path} is not a readable NRRD file: {_first_line(error)}") from error
    if not any(key.startswith("Segment0_") for key in header):
        return None
    count = 0
    while f"Segment{count}_ID" in header or f"Segment{count}_Name" in header:
        for field_name in ("LabelValue", "Layer"):
            value = header.get(f"Segment{count}_{field_name}")
            if value is not None and not str(value).strip().lstrip("-").isdigit():
                raise DataFileError(f"{path}: Segment{count}_{field_name} is {value!r}, not an integer; the "
                                    f"segmentation header is damaged.")
        count += 1
    if count == 0:
        raise DataFileError(f"{path}: its Segment0_ fields lack an ID and a name; the segmentation header is damaged.")
    return header


def read_segmentation(path: PathLike) -> Segmentation:
    """Read `.seg.nrrd` (names, colours, layers kept, via slicerio) or a plain labelmap (.nii.gz, .nrrd,
    .mha, .png: one segment per label value present)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path} does not exist or is not a file.")
    if check_seg_header(path) is not None:
        import slicerio

        try:
            seg = slicerio.read_segmentation(str(path))
        except Exception as error:  # noqa: BLE001 - slicerio raises many types for a damaged file
            raise DataFileError(f"{path} is not a segmentation Slicer could read: {_first_line(error)}") from error
        voxels = np.asarray(seg["voxels"])
        labelmap = voxels.transpose(2, 1, 0) if voxels.ndim == 3 else voxels.transpose(0, 3, 2, 1)
        segments = [Segment(s.get("name", s.get("id", f"Segment_{i + 1}")), s.get("color"),
                            s.get("labelValue", 1), s.get("layer", 0), s.get("id"))
                    for i, s in enumerate(seg.get("segments", []))]
        return Segmentation(np.ascontiguousarray(labelmap), Geometry.from_ijk_to_lps(seg["ijkToLPS"]), segments)
    volume = read_volume(path)
    if volume.array.dtype.kind not in "ui":
        raise DataFileError(f"{path} holds {volume.array.dtype} values, not integer labels.")
    labels = [int(v) for v in np.unique(volume.array) if v != 0]
    segments = [Segment(f"Segment_{v}", DEFAULT_COLORS[i % len(DEFAULT_COLORS)], v) for i, v in enumerate(labels)]
    return Segmentation(volume.array, volume.geometry, segments)
