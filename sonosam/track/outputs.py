"""What a tracking run writes: a `.seq.nrrd` segmentation sequence Slicer reads, an animated GIF and a PNG strip
with overlays, the confidence per frame (CSV) and the interventions (CSV + JSON).

The `.seq.nrrd` layout is the one Slicer's own ``vtkMRMLVolumeSequenceStorageNode`` writes for a sequence
of labelmap volumes (checked against slicer-core): a 4D NRRD, axes ``domain domain domain list``, the
last axis labelled ``time`` in seconds, ``DataNodeClassName:=vtkMRMLLabelMapVolumeNode`` and ``axis 3 index
values:=`` the frame times. Slicer loads it as a sequence of labelmaps (label i = object i); the
SonoSAMTrack module turns it back into a segmentation sequence with one segment per object, named from
the ``SonoSAMTrack_Segment<i>_*`` fields written here (Slicer keeps unknown fields out of its way).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataFileError
from ..io import DEFAULT_COLORS, Geometry, check_name
from ..io import atomic_output as _atomic_output

__all__ = ["write_tracking_outputs", "write_sequence_nrrd", "read_sequence_nrrd", "write_confidence_csv", "write_interventions",
           "write_overlay_gif", "write_overlay_strip", "overlay_frame"]


def segment_fields(names, colors=None) -> dict[str, str]:
    """The ``SonoSAMTrack_Segment<i>_Name/_LabelValue/_Color`` header fields (object i = label i + 1), which
    ``read_sequence_nrrd`` and the SonoSAMTrack module read back."""
    colors = list(colors) if colors else [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(len(names))]
    fields = {}
    for i, name in enumerate(names):
        fields[f"SonoSAMTrack_Segment{i}_Name"] = check_name(str(name), "object name")
        fields[f"SonoSAMTrack_Segment{i}_LabelValue"] = str(i + 1)
        fields[f"SonoSAMTrack_Segment{i}_Color"] = " ".join(f"{float(c):.4g}" for c in colors[i][:3])
    return fields


def write_sequence_nrrd(path, labelmaps: np.ndarray, names: Sequence[str], colors=None,
                        spacing_xy: tuple[float, float] = (1.0, 1.0), frame_time_ms: float | None = None,
                        geometry: Geometry | None = None, note: str | None = None, overwrite: bool = False) -> Path:
    """(T, H, W) integer labelmaps (0 = background, object i = label i + 1) -> Slicer `.seq.nrrd`."""
    import nrrd

    labelmaps = np.asarray(labelmaps)
    if labelmaps.ndim != 3:
        raise DataFileError(f"A segmentation sequence is (T, H, W); got {labelmaps.shape}.")
    dtype = np.uint8 if labelmaps.max(initial=0) < 256 else np.uint16
    geometry = geometry or Geometry((spacing_xy[0], spacing_xy[1], 1.0))
    m = geometry.ijk_to_lps()
    step = (frame_time_ms or 1000.0) / 1000.0
    times = [f"{t * step:.6g}" for t in range(labelmaps.shape[0])]
    header = {
        "type": "unsigned char" if dtype == np.uint8 else "unsigned short",
        "dimension": 4,
        "space": "left-posterior-superior",
        "space directions": np.array([m[:3, 0], m[:3, 1], m[:3, 2], [np.nan] * 3], dtype=float),
        "kinds": ["domain", "domain", "domain", "list"],
        "labels": ["", "", "", "time"],
        "units": ["", "", "", "s" if frame_time_ms else "frame"],
        "space origin": np.asarray(m[:3, 3], float),
        "encoding": "gzip",
        "DataNodeClassName": "vtkMRMLLabelMapVolumeNode",
        "axis 3 index type": "numeric",
        "axis 3 index values": " ".join(times),
    }
    header.update(segment_fields(names, colors))
    if note:
        header["SonoSAMTrack_Note"] = note.replace("\n", " ")
    # C order (T, K=1, J, I) <-> NRRD axes (i, j, k, t).
    data = np.ascontiguousarray(labelmaps.astype(dtype)[:, np.newaxis])
    custom = {k: "string" for k in header if k.startswith(("SonoSAMTrack_", "DataNodeClassName", "axis 3"))}
    with _atomic_output(path, overwrite) as tmp:
        nrrd.write(str(tmp), data, header, index_order="C", custom_field_map=custom)
    return Path(path)


def read_sequence_nrrd(path) -> tuple[np.ndarray, list[dict], dict]:
    """-> ((T, H, W) labelmaps, [{"name", "label", "color"}...], header). Reads files written by Slicer too."""
    import nrrd

    data, header = nrrd.read(str(path), index_order="C")
    if data.ndim == 4:
        data = data[:, 0] if data.shape[1] == 1 else data
    segments = []
    i = 0
    while f"SonoSAMTrack_Segment{i}_Name" in header:
        segments.append({"name": header[f"SonoSAMTrack_Segment{i}_Name"],
                         "label": int(header[f"SonoSAMTrack_Segment{i}_LabelValue"]),
                         "color": tuple(float(v) for v in header[f"SonoSAMTrack_Segment{i}_Color"].split())})
        i += 1
    return np.asarray(data), segments, header


def write_confidence_csv(path, confidences: np.ndarray, names: Sequence[str], sources=None, model_frames=(),
                         overwrite: bool = False, extra: dict[str, Sequence] | None = None) -> Path:
    """One row per frame: frame, <name>_confidence, <name>_source..., model_run (0/1), extra columns."""
    with _atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        head = ["frame"] + [f"{n}_confidence" for n in names]
        if sources is not None:
            head += [f"{n}_source" for n in names]
        head += ["model_run"] + list(extra or {})
        writer.writerow(head)
        for t in range(confidences.shape[0]):
            row = [t] + ["" if np.isnan(c) else f"{c:.4f}" for c in confidences[t]]
            if sources is not None:
                row += list(sources[t])
            row += [int(t in model_frames)] + [values[t] for values in (extra or {}).values()]
            writer.writerow(row)
    return Path(path)


def write_interventions(folder, events, overwrite: bool = False) -> tuple[Path, Path]:
    folder = Path(folder)
    rows = [e.as_dict() for e in events]
    with _atomic_output(folder / "interventions.json", overwrite) as tmp:
        tmp.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    with _atomic_output(folder / "interventions.csv", overwrite) as tmp, \
            open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["frame", "object", "confidence", "status", "reason"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "interventions.json", folder / "interventions.csv"


def overlay_frame(frame: np.ndarray, masks: Sequence[np.ndarray], colors, alpha: float = 0.35,
                  flagged: bool = False) -> np.ndarray:
    """An RGB uint8 frame with the masks blended and outlined; a red border when ``flagged``."""
    from ..io import _outline, _to_rgb8

    canvas = _to_rgb8(frame).astype(np.float32)
    for mask, color in zip(masks, colors):
        mask = np.asarray(mask, bool)
        rgb = np.asarray(color[:3], np.float32) * (255 if max(color[:3]) <= 1 else 1)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * rgb
        canvas[_outline(mask)] = rgb
    if flagged:
        canvas[:4], canvas[-4:], canvas[:, :4], canvas[:, -4:] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _frames_with_overlays(frames, masks_by_object, colors, flagged, max_side):
    from PIL import Image

    for t in range(frames.shape[0]):
        image = Image.fromarray(overlay_frame(frames[t], [m[t] for m in masks_by_object], colors, flagged=t in flagged))
        if max(image.size) > max_side:
            factor = max_side / max(image.size)
            image = image.resize((round(image.size[0] * factor), round(image.size[1] * factor)))
        yield image


def write_overlay_gif(path, frames, masks_by_object, colors, flagged=(), frame_time_ms: float | None = None,
                      max_side: int = 320, overwrite: bool = False) -> Path:
    images = list(_frames_with_overlays(frames, masks_by_object, colors, set(flagged), max_side))
    with _atomic_output(path, overwrite) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=int(round(frame_time_ms or 33)), loop=0)
    return Path(path)


def write_overlay_strip(path, frames, masks_by_object, colors, flagged=(), n: int = 8, max_side: int = 200,
                        overwrite: bool = False) -> Path:
    """A PNG with ``n`` evenly spaced frames side by side (flagged frames framed in red)."""
    from PIL import Image

    picks = np.unique(np.linspace(0, frames.shape[0] - 1, min(n, frames.shape[0])).round().astype(int))
    images = list(_frames_with_overlays(frames[picks], [m[picks] for m in masks_by_object], colors,
                                        {i for i, t in enumerate(picks) if t in set(flagged)}, max_side))
    strip = Image.new("RGB", (sum(im.size[0] for im in images), max(im.size[1] for im in images)))
    x = 0
    for image in images:
        strip.paste(image, (x, 0))
        x += image.size[0]
    with _atomic_output(path, overwrite) as tmp:
        strip.save(tmp, format="PNG")
    return Path(path)


TRACKING_OUTPUTS = ("segmentation.seq.nrrd", "confidence.csv", "interventions.json", "interventions.csv",
                    "overlay.gif", "strip.png", "summary.json")


def write_tracking_outputs(out: Path, tracker, frames: np.ndarray, spacing_xy=(1.0, 1.0),
                           frame_time_ms: float | None = None, seconds: float | None = None,
                           overwrite: bool = False, extra: dict | None = None) -> dict:
    """Everything a tracking run leaves in `out`: segmentation.seq.nrrd, confidence.csv, interventions.json/.csv,
    overlay.gif, strip.png and summary.json (returned as a dict)."""
    out = Path(out)
    names = list(tracker.objects)
    colors = [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(len(names))]
    masks = [tracker.masks(n) for n in names]
    flagged = sorted({e.frame for e in tracker.events})
    sources = [[(tracker.result(t, n).source if tracker.result(t, n) else "") for n in names]
               for t in range(tracker.n_frames)]
    model_name = tracker.predictor.model.spec.name
    write_sequence_nrrd(out / "segmentation.seq.nrrd", tracker.labelmap(), names, colors, spacing_xy, frame_time_ms,
                        note=f"sonosam track, model {model_name}", overwrite=overwrite)
    write_confidence_csv(out / "confidence.csv", tracker.confidences(), names, sources, tracker.model_frames,
                         overwrite=overwrite)
    write_interventions(out, tracker.events, overwrite=overwrite)
    write_overlay_gif(out / "overlay.gif", frames, masks, colors, flagged, frame_time_ms, overwrite=overwrite)
    write_overlay_strip(out / "strip.png", frames, masks, colors, flagged, overwrite=overwrite)
    summary = {**(extra or {}), "frames": int(tracker.n_frames), "objects": names, "model": model_name,
               "model_frames": len(tracker.model_frames), "interventions_requested": len(tracker.events),
               "intervention_frames": flagged}
    if seconds:
        summary.update(seconds=round(seconds, 2), frames_per_second=round(tracker.n_frames / seconds, 3))
    summary["timing_s"] = {k: round(v, 3) for k, v in tracker.timing.items()}
    with _atomic_output(out / "summary.json", overwrite) as temp:
        temp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
