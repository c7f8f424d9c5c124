"""'Auto' mode: a trained prompt predictor (sonosam.ppn) over the slices of a volume or the frames of a
loop, with no clicks. The one loop the server's ``auto`` job and the Slicer logic run; docs/seeds.md.

    ppn = load_ppn(find_ppn("thalamus.ppn.pt"))          # a file in the PPN folder ($SONOSAM_HOME/ppn)
    result = auto_segment_stack(ppn, predictor, stack, "Thalamus_L", slices=range(60, 90))
    result.masks  (n, H, W) bool, one per slice asked for; result.slices: index, present, objectness, score, box

A slice where the predictor judges the class absent (objectness below ``threshold``) gets an empty mask.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import SonoSAMError

__all__ = ["ppn_dir", "find_ppn", "SliceAuto", "StackAuto", "auto_segment_stack", "PPN_SUFFIXES"]

PPN_SUFFIXES = (".ppn.pt", ".pt", ".pth")


def ppn_dir() -> Path:
    """Where a server (and the module) looks for trained prompt predictors: $SONOSAM_HOME/ppn, else
    ~/.cache/sonosam/ppn (beside the weights folder; `sonosam serve --cache-dir DIR` makes it DIR/ppn)."""
    root = os.environ.get("SONOSAM_HOME") or Path.home() / ".cache" / "sonosam"
    return Path(root) / "ppn"


def find_ppn(name: str, folder: Path | None = None) -> Path:
    """A PPN file by its plain name inside ``folder`` (default ppn_dir()): never a path elsewhere, so a
    server reads no file a client names outside its own folder."""
    folder = Path(folder or ppn_dir())
    if not isinstance(name, str) or not name or name != Path(name).name or name.startswith(".") \
            or not name.endswith(PPN_SUFFIXES):
        raise SonoSAMError(f"PPN {name!r} must be the plain file name (e.g. thalamus.ppn.pt) of a prompt predictor "
                           f"in {folder}; send the file's bytes instead for one that is elsewhere.")
    path = folder / name
    if not path.is_file():
        known = sorted(p.name for p in folder.glob("*") if p.name.endswith(PPN_SUFFIXES)) if folder.is_dir() else []
        raise SonoSAMError(f"No prompt predictor {name!r} in {folder} (there: {', '.join(known) or 'none'}); put the "
                           "file from `sonosam train ppn` there, or send its bytes.")
    return path


@dataclass
class SliceAuto:
    index: int
    present: bool
    objectness: float
    score: float | None       # the decoder's predicted IoU (None when judged absent)
    box: list                 # the predicted box prompt, x0 y0 x1 y1 in the slice's pixels ([] on a blank slice)

    def as_dict(self) -> dict:
        return {"index": self.index, "present": self.present, "objectness": self.objectness, "score": self.score,
                "box": self.box}


@dataclass
class StackAuto:
    class_name: str
    masks: np.ndarray                         # (n, H, W) bool, in the order of `slices`
    slices: list[SliceAuto] = field(default_factory=list)
    seconds: float = 0.0
    cancelled: bool = False

    @property
    def indices(self) -> list[int]:
        return [s.index for s in self.slices]

    def summary(self) -> str:
        present = [s.index for s in self.slices if s.present]
        return (f"{self.class_name}: found on {len(present)} of {len(self.slices)} slices"
                + (f" ({present[0]}-{present[-1]})" if present else "") + f" in {self.seconds:.1f} s")


def auto_segment_stack(ppn, predictor, stack: np.ndarray, class_name: str, slices: Iterable[int] | None = None, *,
                       threshold: float = 0.5, window=None, key_prefix=None, key=None, progress=None,
                       cancel=None) -> StackAuto:
    """The prompt predictor's mask of ``class_name`` on each of ``slices`` (default all) of ``stack`` (n, H, W),
    through ``predictor`` (its cache; keys ``(key_prefix, 0, index)`` as sonosam.volume.propagate's, or
    ``key(index)``).
    ``progress(done, total, SliceAuto)`` after each slice; ``cancel`` (threading.Event or callable) stops
    before the next slice (``result.cancelled``; the masks so far are not meant to be written)."""
    from .ppn import auto_segment

    ppn.class_index(class_name)   # an unknown class is refused before any slice is encoded
    indices: Sequence[int] = list(range(len(stack))) if slices is None else [int(i) for i in slices]
    if not indices:
        raise SonoSAMError("No slice to segment: give at least one slice index.")
    bad = [i for i in indices if not 0 <= i < len(stack)]
    if bad:
        raise SonoSAMError(f"Slice {bad[0]} is outside 0..{len(stack) - 1}.")
    model = getattr(predictor, "base", predictor).model   # the PPN was trained against the base model's prompts
    began = time.perf_counter()
    out = StackAuto(class_name, np.zeros((len(indices),) + stack.shape[1:3], bool))
    for n, index in enumerate(indices):
        if cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()):
            out.cancelled = True
            break
        if not np.ptp(stack[index]):   # a blank slice (a loop's or a scan's zero padding): nothing to find
            info = SliceAuto(index, False, 0.0, None, [])
        else:
            cache_key = key(index) if key is not None else None if key_prefix is None else (key_prefix, 0, index)
            embedding = predictor.embedding(stack[index], key=cache_key, window=window)
            result = auto_segment(ppn, model, embedding, class_name, threshold=threshold)
            if result.present:
                out.masks[n] = np.asarray(result.mask, bool)
            info = SliceAuto(index, bool(result.present), float(result.objectness),
                             None if result.prediction is None else float(result.prediction.score),
                             [float(v) for v in result.box])
        out.slices.append(info)
        if progress is not None:
            progress(n + 1, len(indices), info)
    out.seconds = time.perf_counter() - began
    return out
