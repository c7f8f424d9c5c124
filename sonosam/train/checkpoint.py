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
import hashlib
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
    base_model = base_model or getattr(model.spec, "base_model", None) or model.spec.name
    base_file = check_decoder_base(model, base_model) if weights == "decoder" else None
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu") for k, v in model.sam.state_dict().items()
             if weights == "full" or k.startswith(ENCODER_PREFIX if weights == "encoder" else DECODER_PREFIXES)}
    if dtype != "float32":
        state = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in state.items()}
    _atomic_save(state, path)
    meta = {
        "format": FORMAT, "version": 1,
        "name": name or path.stem,
        "description": description or f"{kind} training of {base_model} ({path.name})",
        "base_model": base_model,
        "architecture": architecture or getattr(model.spec, "architecture", None) or {"type": base_model},
        "weights": weights, "dtype": dtype, "file": path.name,
        "image_size": model.spec.image_size, "normalization": model.spec.normalization,
        "prompt_kinds": sorted(model.spec.prompt_kinds), "multimask": bool(model.spec.multimask),
        # a distilled encoder keeps its decoder's answer to a mask alone; a trained decoder or prompt encoder is
        # not known to give one
        "mask_alone": bool(model.spec.mask_alone) and kind == "distill",
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
    if base_file is not None:  # the base weights this overlay goes on; checked when it is loaded
        meta["base_weights_sha256"] = weights_module.file_digest(base_file, "sha256")
    meta_path = path.with_suffix(".json")
    from ..io.atomic import write_text

    write_text(meta_path, json.dumps(meta, indent=2, default=str) + "\n", overwrite=True)
    return path, meta_path


def checkpoint_name(path, name: str | None = None) -> str:
    """The registry name of a checkpoint written to ``path``: ``name``, else the file's stem, refused when it is a
    built-in model's (the training commands ask before any work; the registry would register it as NAME@SHA)."""
    from ..models import check_model_name

    return check_model_name(name or Path(path).stem)


_BASE_ENCODERS: dict[tuple, str] = {}   # (base file, size, mtime) -> digest of its image encoder


def _encoder_digest(state: dict) -> str:
    """sha256 of the image-encoder tensors (names, shapes, float32 values): equal iff the encoders are equal."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state if k.startswith(ENCODER_PREFIX)):
        tensor = state[key].detach().to("cpu")
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_decoder_base(model, base_model: str | None = None) -> Path:
    """The base weights file a decoder-only save (``weights="decoder"``) of ``model`` goes over; refused unless
    ``model``'s image encoder is exactly that file's (another checkpoint, a distilled student, adapters)."""
    from ..errors import TrainingError
    from ..models import _REGISTRY, weights_path

    base_model = base_model or getattr(model.spec, "base_model", None) or model.spec.name
    base_file = weights_path(_REGISTRY[base_model]) if base_model in _REGISTRY else None
    if base_file is None:
        raise TrainingError(f"A decoder-only save goes over the base model {base_model!r}'s weights file, which is "
                            "not here; save the full weights (--save full, weights='full').")
    stat = base_file.stat()
    memo = (str(base_file), stat.st_size, stat.st_mtime_ns)
    if memo not in _BASE_ENCODERS:
        _BASE_ENCODERS[memo] = _encoder_digest(weights_module.load_state_dict(base_file))
    if _encoder_digest(model.sam.state_dict()) != _BASE_ENCODERS[memo]:
        raise TrainingError(f"This {model.spec.name} model's image encoder ({model.checkpoint or 'in memory'}) is not "
                            f"{base_model}'s ({base_file}), over which a decoder-only save is reloaded; save the full "
                            "weights (--save full, weights='full').")
    return base_file


def read_metadata(path) -> dict:
    path = Path(path)
    meta_path = path if path.suffix == ".json" else path.with_suffix(".json")
    return json.loads(meta_path.read_text())
