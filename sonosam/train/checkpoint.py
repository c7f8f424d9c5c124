"""Training outputs: an ordinary PyTorch state dict (``OUT.pth``) plus ``OUT.json``, the metadata the
model registry reads (``sonosam.models.register_checkpoint``):

* ``weights: "full"`` -- the whole ``Sam`` state dict; it also loads with
  ``load_model(base, checkpoint=OUT.pth)`` and any plain ``load_state_dict``;
* ``weights: "decoder"`` -- only ``prompt_encoder.*`` and ``mask_decoder.*`` (a few MB, fp16 allowed),
  loaded over the base model's own weights, whose sha256 is recorded and checked;
* ``weights: "encoder"`` -- only ``image_encoder.*`` (a distilled student's encoder); the prompt encoder + mask
  decoder are those of the registered model named in ``decoder_from``, taken at load time, so the file stays
  small and follows that model's decoder.

The JSON also records the base architecture, preprocessing (input size, intensity normalisation),
prompt kinds, the training data summary and configuration, and the sha256 of ``OUT.pth``.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch

from ..models import weights as weights_module
from ..zoom import check_scales

__all__ = ["save_checkpoint", "read_metadata", "FORMAT"]

FORMAT = "sonosam-checkpoint"
DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")
ENCODER_PREFIX = "image_encoder."


def _atomic_save(obj, path: Path) -> None:
    """torch.save through a temp file beside `path` and one rename (a full disk leaves the old file or none).
    Replacing is the caller's decision (the command line refuses an existing output without --overwrite)."""
    from ..io.atomic import atomic_output

    with atomic_output(path, overwrite=True) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(model, path, *, name: str | None = None, kind: str = "decoder", weights: str = "full",
                    dtype: str = "float32", training: dict | None = None, architecture: dict | None = None,
                    base_model: str | None = None, description: str | None = None,
                    decoder_from: str | None = None, box_scales=None,
                    box_sessions_of: str | None = None) -> tuple[Path, Path]:
    """Write ``path`` (state dict) and ``path`` with ``.json`` (metadata); returns both paths. ``box_scales``: the
    scales a user's box is answered at (`ModelSpec.box_scales`), written when given (else the whole image).
    ``box_sessions_of``: a decoder for box sessions only, the rest answered by that model (`ModelSpec`)."""
    if weights not in ("full", "decoder", "encoder"):
        raise ValueError("weights must be 'full', 'decoder' or 'encoder'")
    if (weights == "encoder") != bool(decoder_from):
        raise ValueError("weights='encoder' needs decoder_from (the model whose prompt encoder + mask decoder it "
                         "uses), and decoder_from only goes with weights='encoder'")
    scales = None if box_scales is None else list(check_scales(box_scales))   # refused before anything is written
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu") for k, v in model.sam.state_dict().items()
             if weights == "full" or k.startswith(ENCODER_PREFIX if weights == "encoder" else DECODER_PREFIXES)}
    if dtype != "float32":
        state = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in state.items()}
    _atomic_save(state, path)
    base_model = base_model or getattr(model.spec, "base_model", None) or model.spec.name
    meta = {
        "format": FORMAT, "version": 1,
        "name": name or path.stem,
        "description": description or f"{kind} training of {base_model} ({path.name})",
        "base_model": base_model,
        "architecture": architecture or {"type": base_model},
        "weights": weights, "dtype": dtype, "file": path.name,
        "image_size": model.spec.image_size, "normalization": model.spec.normalization,
        "prompt_kinds": sorted(model.spec.prompt_kinds), "multimask": bool(model.spec.multimask),
        "training": {"kind": kind, **(training or {})},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sha256": weights_module.file_digest(path, "sha256"),
    }
    if decoder_from:
        meta["decoder_from"] = decoder_from
    if scales is not None:
        meta["box_scales"] = scales
    if box_sessions_of:
        meta["box_sessions_of"] = box_sessions_of
    if weights == "decoder":  # the base weights this overlay goes on; checked when it is loaded
        from ..models import _REGISTRY, weights_path

        base_file = weights_path(_REGISTRY[base_model]) if base_model in _REGISTRY else None
        if base_file is None:
            raise ValueError(f"weights='decoder' needs the base model {base_model!r}'s weights file; save 'full'.")
        meta["base_weights_sha256"] = weights_module.file_digest(base_file, "sha256")
    meta_path = path.with_suffix(".json")
    from ..io.atomic import write_text

    write_text(meta_path, json.dumps(meta, indent=2, default=str) + "\n", overwrite=True)
    return path, meta_path


def read_metadata(path) -> dict:
    path = Path(path)
    meta_path = path if path.suffix == ".json" else path.with_suffix(".json")
    return json.loads(meta_path.read_text())
