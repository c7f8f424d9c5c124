"""Inference backends: the same SAM network run by another engine, behind `SamModel.encode/decode`.

    model = load_model("litemedsam", backend="auto")     # or "eager", "onnx", "onnx-decoder", "eager-fp16", ...
    model.use_backend("onnx")                            # switch later; returns the backend actually used

Backends:

- ``eager``       the plain PyTorch modules (the reference every other backend is checked against).
- ``onnx``        ONNX Runtime (CPU) for the image encoder and for the prompt encoder + mask decoder.
                  Both graphs are exported once with `torch.onnx.export` and cached on disk.
- ``onnx-decoder``  eager encoder, ONNX Runtime decoder (fast clicks, encoder untouched).
- ``eager-fp16`` / ``eager-bf16``  PyTorch under autocast, meant for GPUs (outputs returned as float32);
                  ``eager-fp16`` on CPU falls back to eager (float16 is far slower there).
- ``auto``        CUDA: ``eager``; CPU: ``onnx`` when onnxruntime is importable, else ``eager``.

Any backend that cannot be set up (onnxruntime missing, export failure, wrong device) falls back to
``eager`` with a logged note; nothing crashes. A backend always answers: a request it cannot run (the
ONNX decoder graph with a mask prompt alone) goes to the eager code it inherits. Exported artefacts live in ``~/.cache/sonosam/onnx/``
(beside the weights cache), named by a key that includes a fingerprint of the exported weights (the decoder's
also the model's name and checkpoint sha256) and the torch/onnxruntime versions. Each comes with a JSON record holding the file's
sha256; an artefact whose record is missing or does not match, or which ONNX Runtime cannot load, is
rebuilt, never trusted. Files are written to a temporary name and moved into place atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import weights
from .fast_decoder import FastDecoderGraph

if TYPE_CHECKING:
    from .sam import SamModel

log = logging.getLogger("sonosam.backends")

from ..devices import BACKENDS  # noqa: E402 - one list, also read by the command line without torch
FORMAT = 3            # bump when the export wrappers change: old artefacts are then never matched
OPSET = 17
EXPORTS: dict[str, int] = {}   # artefact part -> how many times it was exported in this process (tests)
_LOCK = threading.Lock()


class BackendUnavailable(RuntimeError):
    """This backend cannot run here; the caller falls back to eager."""


def artefact_dir() -> Path:
    """Exported artefacts: beside the weights cache ($SONOSAM_HOME/onnx or ~/.cache/sonosam/onnx)."""
    return weights.cache_dir().parent / "onnx"


# ---------------------------------------------------------------------------------------------- backends

class EagerBackend:
    """Plain PyTorch: the reference, and what the other backends hand a request they cannot run."""
    name = "eager"
    batch_size = 1

    def encode(self, model: "SamModel", batch: torch.Tensor) -> torch.Tensor:
        return model.sam.image_encoder(batch)

    def decode(self, model: "SamModel", features, coords, labels, box, mask_input, multimask):
        """Prompt tensors in encoder-input coordinates -> (low-res logits (1, M, 256, 256), IoU (1, M))."""
        sam = model.sam
        points = (coords, labels) if coords is not None else None
        sparse, dense = sam.prompt_encoder(points=points, boxes=box, masks=mask_input)
        return sam.mask_decoder(image_embeddings=features, image_pe=sam.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                multimask_output=multimask)


class AutocastBackend(EagerBackend):
    """PyTorch under autocast (fp16/bf16): for GPUs; float32 in and out, so embeddings stay interchangeable."""

    def __init__(self, model: "SamModel", dtype: torch.dtype):
        self.dtype = dtype
        self.name = "eager-fp16" if dtype == torch.float16 else "eager-bf16"
        self.device_type = model.device.type
        if self.device_type not in ("cuda", "cpu"):
            raise BackendUnavailable(f"autocast is not set up for device {model.device}")
        if self.device_type == "cpu" and dtype == torch.float16:
            raise BackendUnavailable("float16 on CPU is many times slower than float32; eager-fp16 is for CUDA")
        self.batch_size = 8 if self.device_type == "cuda" else 1

    def _autocast(self):
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def encode(self, model, batch):
        with self._autocast():
            return model.sam.image_encoder(batch).float()

    def decode(self, model, features, coords, labels, box, mask_input, multimask):
        sam = model.sam
        points = (coords, labels) if coords is not None else None
        with self._autocast():
            sparse, dense = sam.prompt_encoder(points=points, boxes=box, masks=mask_input)
            low_res, iou = sam.mask_decoder(image_embeddings=features, image_pe=sam.prompt_encoder.get_dense_pe(),
                                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                            multimask_output=multimask)
        return low_res.float(), iou.float()


class OnnxBackend(EagerBackend):
    """ONNX Runtime on CPU for the encoder and/or the prompt encoder + mask decoder."""
    batch_size = 1  # measured: batching gains nothing on CPU with ONNX Runtime, and the export is batch-1

    def __init__(self, model: "SamModel", name: str):
        try:
            import onnxruntime  # noqa: F401
        except ImportError as error:
            raise BackendUnavailable(f"onnxruntime is not installed ({error})") from None
        if model.device.type != "cpu":
            raise BackendUnavailable(f"the ONNX backends run on CPU; the model is on {model.device}")
        self.name = name
        self.encoder = None
        if name == "onnx":
            self.encoder = load_artefact(model, "encoder")
        self.decoder = load_artefact(model, "decoder")

    def encode(self, model, batch):
        if self.encoder is None:   # onnx-decoder: the encoder stays eager
            return super().encode(model, batch)
        images = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        # the graph is exported at batch 1: a larger batch (encode_many(batch_size=...)) runs image by image
        return torch.from_numpy(np.concatenate([self.encoder.run(None, {"image": images[i:i + 1]})[0]
                                                for i in range(len(images))]))

    def decode(self, model, features, coords, labels, box, mask_input, multimask):
        if coords is None and box is None:
            # a mask prompt alone has an empty sparse embedding, which the graph cannot take: eager answers
            return super().decode(model, features, coords, labels, box, mask_input, multimask)
        parts_xy, parts_label = [], []
        if coords is not None:
            parts_xy.append(coords.reshape(1, -1, 2).cpu().numpy())
            parts_label.append(labels.reshape(1, -1).cpu().numpy().astype(np.float32))
        if box is not None:
            parts_xy.append(box.reshape(1, 2, 2).cpu().numpy())
            parts_label.append(np.array([[2, 3]], np.float32))
        else:  # as the eager prompt encoder: points without a box get a padding point
            parts_xy.append(np.zeros((1, 1, 2), np.float32))
            parts_label.append(np.array([[-1]], np.float32))
        feed = {"image_embeddings": _with_dense_prompt(model.sam, features, mask_input).numpy(),
                "point_coords": np.concatenate(parts_xy, axis=1).astype(np.float32),
                "point_labels": np.concatenate(parts_label, axis=1)}
        low_res, iou = self.decoder.run(None, feed)
        keep = slice(1, None) if multimask else slice(0, 1)   # as MaskDecoder.forward
        return torch.from_numpy(np.ascontiguousarray(low_res[:, keep])), torch.from_numpy(iou[:, keep].copy())


def _with_dense_prompt(sam, features: torch.Tensor, mask_input: torch.Tensor | None) -> torch.Tensor:
    """Image embedding + the prompt encoder's dense embedding (of the mask prompt, or "no mask"), float32 CPU."""
    encoder = sam.prompt_encoder
    if mask_input is None:
        dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    else:
        dense = encoder._embed_masks(mask_input.to(features.device, torch.float32))
    return (features.float() + dense).detach().cpu().contiguous()


def make_backend(model: "SamModel", name: str | None = "auto"):
    """The backend `name` for this model, or eager with a logged note when it cannot run here."""
    from ..devices import check_backend_name

    name = check_backend_name(name)  # normalised ("ONNX " is "onnx"); an unknown name is a DeviceError naming the choices
    if name == "auto":
        name = _auto_choice(model)
    try:
        if name == "eager":
            return EagerBackend()
        if name in ("eager-fp16", "eager-bf16"):
            return AutocastBackend(model, torch.float16 if name == "eager-fp16" else torch.bfloat16)
        return OnnxBackend(model, name)
    except Exception as error:  # noqa: BLE001 - any failure here means: run eager, and say why
        log.warning("sonosam: backend %r is not available for %s (%s); using eager PyTorch.",
                    name, model.spec.name, error)
        return EagerBackend()


def _auto_choice(model: "SamModel") -> str:
    if model.device.type != "cpu":
        return "eager"   # GPU: eager fp32 is already fast; fp16/bf16 are opt-in until checked on a GPU
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log.info("sonosam: onnxruntime is not installed; auto backend uses eager PyTorch.")
        return "eager"
    return "onnx"


# ---------------------------------------------------------------------------------------------- export

def _versions() -> dict:
    import onnxruntime

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "format": FORMAT, "opset": OPSET}


_SHA_MEMO: dict[tuple, str] = {}


def _checkpoint_sha256(path: Path | None) -> str:
    if path is None:
        return "untrained"
    stat = Path(path).stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _SHA_MEMO:
        _SHA_MEMO[memo] = weights.file_digest(path)
    return _SHA_MEMO[memo]


def _fingerprint(module: torch.nn.Module) -> str:
    """sha256 of the module's tensors: catches overlays and in-memory changes the checkpoint file does not."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def artefact_key(model: "SamModel", part: str) -> tuple[str, dict]:
    """(file stem, record) of ``part``'s artefact. The encoder's graph depends on its class, its architecture record
    and its weights alone, so it is keyed by them: models sharing an image encoder (litemedsam and the decoders
    trained over it) share one."""
    modules = {"decoder": (model.sam.prompt_encoder, model.sam.mask_decoder)}.get(part, (model.sam.image_encoder,))
    record = {"part": part, "image_size": model.spec.image_size, "classes": [type(m).__name__ for m in modules],
              "architecture": getattr(model.spec, "architecture", None) or {"type": model.spec.name},
              "weights_sha256": hashlib.sha256("".join(_fingerprint(m) for m in modules).encode()).hexdigest(),
              **_versions()}
    if part == "decoder":
        record.update(model=model.spec.name, checkpoint_sha256=_checkpoint_sha256(model.checkpoint))
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]
    return f"{model.spec.name}-{part}-{key}" if part == "decoder" else f"{part}-{key}", record


def load_artefact(model: "SamModel", part: str):
    """An ONNX Runtime session for `part` ("encoder" or "decoder"), from the disk cache when a
    verified artefact is there, else exported (checked against eager, then cached) now."""
    with _LOCK:
        path, session = _ensure(model, part)
        return session if session is not None else _session(path)


def _ensure(model: "SamModel", part: str):
    """(path of a verified artefact, its session if one was opened on the way)."""
    stem, record = artefact_key(model, part)
    folder = artefact_dir()
    path, meta_path = folder / f"{stem}.onnx", folder / f"{stem}.json"
    session = _open_verified(path, meta_path, record)
    if session is not None:
        return path, session
    folder.mkdir(parents=True, exist_ok=True)
    temp = _export(model, part, path)
    try:
        session = _session(temp)
        _check_against_eager(model, part, session)
        sha = weights.file_digest(temp)
        os.replace(temp, path)          # the record goes last: an artefact without one is never used
        _atomic_write_text(meta_path, json.dumps({**record, "onnx_sha256": sha}, indent=1, sort_keys=True))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    EXPORTS[part] = EXPORTS.get(part, 0) + 1
    return path, session


def _open_verified(path: Path, meta_path: Path, record: dict):
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if any(meta.get(k) != v for k, v in record.items()):
            raise ValueError("its record does not match this model and these versions")
        if weights.file_digest(path) != meta.get("onnx_sha256"):
            raise ValueError("its sha256 does not match its record")
        return _session(path)
    except Exception as error:  # noqa: BLE001 - corrupt or stale: rebuild
        log.warning("sonosam: cached artefact %s is not usable (%s); rebuilding it.", path, error)
        for stale in (path, meta_path):
            with contextlib.suppress(OSError):
                stale.unlink()
        return None


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Memory patterns pre-plan one block for all of a run's intermediates: LiteMedSAM's encoder keeps
    # 256x256x256 feature maps, and the plan held about twice the memory for good (docs/speed.md).
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _atomic_write_text(path: Path, text: str) -> None:
    handle, temp = tempfile.mkstemp(prefix=path.name, suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def _export(model: "SamModel", part: str, path: Path) -> str:
    """Export `part` into a temporary file beside `path`; the caller checks it and moves it into place."""
    import warnings

    handle, temp = tempfile.mkstemp(prefix=path.stem, suffix=".part.onnx", dir=path.parent)
    os.close(handle)
    log.info("sonosam: exporting the %s of %s to ONNX (once; cached in %s)", part, model.spec.name, path.parent)
    try:
        size = model.spec.image_size
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if part == "encoder":
                module = _CpuCopy(model.sam.image_encoder).eval()
                torch.onnx.export(module, (torch.randn(1, 3, size, size),), temp, input_names=["image"],
                                  output_names=["features"], opset_version=OPSET, dynamo=False)
            else:
                module = _CpuCopy(FastDecoderGraph(model.sam)).eval()
                dim = model.sam.prompt_encoder.embed_dim
                side = model.sam.prompt_encoder.image_embedding_size
                args = (torch.randn(1, dim, *side), torch.randint(0, size, (1, 2, 2)).float(),
                        torch.tensor([[2.0, 3.0]]))
                torch.onnx.export(module, args, temp, opset_version=OPSET, dynamo=False,
                                  input_names=["image_embeddings", "point_coords", "point_labels"],
                                  output_names=["low_res_masks", "iou_predictions"],
                                  dynamic_axes={"point_coords": {1: "points"}, "point_labels": {1: "points"}})
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        # torch.onnx.export puts the exported module back into the mode it found it in: a wrapper in training
        # mode would leave TinyViT's BatchNorm and attention-bias cache in training mode. Never let that happen.
        if any(m.training for m in model.sam.modules()):
            model.sam.eval()
    return temp


class _CpuCopy(torch.nn.Module):
    """Trace on CPU in float32 whatever the live model's device (export only; weights are shared when on CPU)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module if next(module.parameters()).device.type == "cpu" else _cpu_clone(module)

    def forward(self, *args):
        return self.module(*args)


def _cpu_clone(module):
    import copy

    return copy.deepcopy(module).cpu().float()


def _check_against_eager(model: "SamModel", part: str, session) -> None:
    """A fresh export must reproduce eager on a fixed input; a broken graph is never cached silently."""
    size = model.spec.image_size
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        if part == "encoder":
            image = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
            reference = model.sam.image_encoder(image.to(model.device)).float().cpu().numpy()
            got = session.run(None, {"image": image.numpy()})[0]
        else:
            sam, scale = model.sam, size / 256
            features = torch.randn(1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size,
                                   generator=generator)
            corners = torch.tensor([[[40.0, 30.0], [200.0, 220.0]]]) * scale
            sparse, dense = sam.prompt_encoder(points=None, boxes=corners.reshape(1, 4).to(model.device), masks=None)
            reference = sam.mask_decoder.predict_masks(
                image_embeddings=features.to(model.device), image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)[0].float().cpu().numpy()
            got = session.run(None, {"image_embeddings": _with_dense_prompt(sam, features, None).numpy(),
                                     "point_coords": corners.numpy(),
                                     "point_labels": np.array([[2, 3]], np.float32)})[0]
    error = np.abs(got - reference).max() / (np.abs(reference).max() + 1e-6)
    limit = 1e-3
    if not np.isfinite(got).all() or error > limit:
        raise RuntimeError(f"exported {part} differs from eager by {error:.3g} (relative), more than {limit}")
