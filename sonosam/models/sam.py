"""One SAM-family network (a `segment_anything.modeling.Sam`, whatever its encoder) with its own
preprocessing and prompt rules, split into the two calls interactive use needs: encode once, decode
per prompt."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from ..errors import PromptError, SonoSAMError, UnsupportedPromptError
from ..image import to_uint8_rgb
from ..prompts import LOW_RES, Prediction, PromptKind, Prompts, low_res_frame

if TYPE_CHECKING:
    from . import ModelSpec


def mask_to_logits(mask: np.ndarray, magnitude: float = 8.0) -> np.ndarray:
    """A binary or soft (0..1) HxW mask -> the (256, 256) logits SAM takes as a mask prompt.

    Every family here lays the low-res frame out the same way: the image scaled so its longest side
    spans it, padded at the bottom/right. Inside -> +magnitude, outside -> -magnitude."""
    import cv2

    mask = np.asarray(mask, dtype=np.float32)
    h, w = low_res_frame(mask.shape)
    canvas = np.zeros((LOW_RES, LOW_RES), np.float32)
    canvas[:h, :w] = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA if max(mask.shape) > LOW_RES
                                else cv2.INTER_LINEAR)
    return (canvas * 2.0 - 1.0) * magnitude


def encoder_id(model) -> str:
    """A short id of ``model``'s image encoder weights + preprocessing (cached on the model object): two models
    with the same id give the same embeddings (the training cache's folders, propagation's carrier)."""
    cached = getattr(model, "_sonosam_encoder_id", None)
    if cached:
        return cached
    digest = hashlib.sha256(f"{model.spec.image_size}:{model.spec.normalization}".encode())
    for name, tensor in sorted(model.sam.image_encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    value = digest.hexdigest()[:16]
    model._sonosam_encoder_id = value
    return value


@dataclass
class Embedding:
    """The image encoder's output for one image, with what decoding needs to map back to pixels."""
    features: torch.Tensor          # (1, 256, 64, 64) on the model's device
    original_size: tuple[int, int]  # (H, W) of the image given to encode()
    input_size: tuple[int, int]     # (h, w) after resizing the longest side to the encoder's input
    model_id: str

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()


def encoder_slab_depth(sam: torch.nn.Module) -> int:
    """How many neighbouring slices the image encoder must see together in one batch: the slab depth of
    Med-SA's SD-Trans (sonosam.adapters records its configuration in `sam.medsa_config`), else 1."""
    config = getattr(sam, "medsa_config", None) or {}
    return int(config.get("slab_depth", 1)) if config.get("depth_attention") else 1


class SamModel:
    def __init__(self, spec: "ModelSpec", sam: torch.nn.Module, checkpoint: Path | None = None):
        self.spec = spec
        self.sam = sam
        self.checkpoint = checkpoint
        self.transform = ResizeLongestSide(spec.image_size)
        # Embeddings are only valid for the weights that made them: the id keys the cache.
        stamp = f"{checkpoint.stat().st_size}-{int(checkpoint.stat().st_mtime)}" if checkpoint else "untrained"
        self.model_id = f"{spec.name}:{stamp}"
        self.box_session_model: SamModel | None = None   # answers a user's box sessions (ModelSpec.box_sessions_of)
        from .backends import EagerBackend

        self._backend = EagerBackend()  # see use_backend() and sonosam.models.backends

    def use_backend(self, name: str | None = "auto") -> str:
        """Run encode/decode with another engine ("auto", "eager", "onnx", "onnx-decoder",
        "eager-fp16", "eager-bf16"; see sonosam.models.backends). One that cannot run here falls back to
        eager with a logged note. Returns the name of the backend now in use."""
        from .backends import make_backend

        self._backend = make_backend(self, name)
        return self._backend.name

    @property
    def backend(self) -> str:
        return self._backend.name

    def __repr__(self):
        return (f"SamModel({self.spec.name!r}, device={self.device}, backend={self.backend!r}, "
                f"checkpoint={str(self.checkpoint)!r})")

    @property
    def slab_depth(self) -> int:
        """Slices to encode together (encode_many(batch_size=...)): > 1 for Med-SA's SD-Trans."""
        return encoder_slab_depth(self.sam)

    @property
    def device(self) -> torch.device:
        return next(self.sam.parameters()).device

    def preprocess(self, image, window=None) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """image -> (1, 3, S, S) normalised and padded encoder input, original and resized sizes."""
        rgb = to_uint8_rgb(image, window)
        resized = self.transform.apply_image(rgb)  # same PIL resize as SamPredictor, for identical results
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None].float()
        if self.spec.normalization == "minmax":  # MedSAM/LiteMedSAM: per-image min-max after resizing
            low, high = tensor.min(), tensor.max()
            tensor = (tensor - low) / torch.clamp(high - low, min=1e-8) * 255.0
        return self.sam.preprocess(tensor), rgb.shape[:2], tuple(resized.shape[:2])

    @torch.inference_mode()
    def encode(self, image, window=None) -> Embedding:
        batch, original_size, input_size = self.preprocess(image, window)
        features = self._backend.encode(self, batch)
        return Embedding(features, original_size, input_size, self.model_id)

    @torch.inference_mode()
    def encode_many(self, images, window=None, batch_size: int | None = None) -> list[Embedding]:
        """Encode several images, in batches where the backend gains from it (CUDA), else one by one.
        `batch_size` forces batches of that size: a model whose encoder mixes the images of a batch
        (Med-SA's SD-Trans treats a batch as a slab of neighbouring slices) needs its slabs together."""
        size = batch_size or getattr(self._backend, "batch_size", 8 if self.device.type == "cuda" else 1)
        if size <= 1:
            return [self.encode(image, window) for image in images]
        embeddings: list[Embedding] = []
        for start in range(0, len(images), size):
            group = [self.preprocess(image, window) for image in images[start:start + size]]
            batch = torch.cat([item[0] for item in group])
            features = self._backend.encode(self, batch)
            embeddings += [Embedding(features[i:i + 1].clone(), item[1], item[2], self.model_id)
                           for i, item in enumerate(group)]
        return embeddings

    @torch.inference_mode()
    def decode(self, embedding: Embedding, prompts: Prompts, multimask: bool = False) -> Prediction:
        """Masks for `prompts` (pixel coordinates of the encoded image), best first; `multimask` asks for
        the three candidate masks where the model's multimask heads were trained."""
        if not isinstance(prompts, Prompts):
            raise TypeError(f"decode() takes a sonosam.prompts.Prompts, not {type(prompts).__name__}; "
                            "e.g. model.decode(embedding, Prompts(box=(x0, y0, x1, y1))).")
        if embedding.model_id != self.model_id:
            raise SonoSAMError(f"This embedding was made by {embedding.model_id}, not {self.model_id}; "
                               "encode the image again with this model.")
        height, width = embedding.original_size
        prompts.check_inside(width, height)
        prompts, notes = self.apply_prompt_rules(prompts)
        points = prompts.points if prompts.has_points else None
        labels, box, mask_logits = prompts.labels, prompts.box, prompts.mask_logits
        if multimask and not self.spec.multimask:  # its other heads are untrained: their masks are noise
            multimask = False
        device, size = self.device, embedding.original_size
        point_input = box_input = mask_input = None
        if points is not None:
            coords = torch.as_tensor(self.transform.apply_coords(points, size), dtype=torch.float, device=device)
            point_input = (coords[None], torch.tensor(labels, dtype=torch.int, device=device)[None])
        if box is not None:
            box_input = torch.as_tensor(self.transform.apply_boxes(box[None], size), dtype=torch.float, device=device)
        if mask_logits is not None:
            mask_input = torch.tensor(mask_logits, dtype=torch.float, device=device)[None, None]

        low_res, iou = self._backend.decode(self, embedding.features, *(point_input or (None, None)), box_input,
                                            mask_input, multimask)
        masks = self.sam.postprocess_masks(low_res, embedding.input_size, size) > self.sam.mask_threshold
        order = torch.argsort(iou[0], descending=True)
        return Prediction(masks[0, order].cpu().numpy(), iou[0, order].float().cpu().numpy(),
                          low_res[0, order].float().cpu().numpy(), notes)

    def apply_prompt_rules(self, prompts: Prompts) -> tuple[Prompts, list[str]]:
        """The model's prompt rules: what it was trained for decides what it is given. Returns the prompts
        to decode and notes for the user on how they were interpreted."""
        if prompts.is_empty:
            raise PromptError("No prompt: give at least a point, a box or a mask.")
        notes: list[str] = []
        kinds = self.spec.prompt_kinds
        if prompts.has_points and PromptKind.POINT not in kinds:
            positives = prompts.points[prompts.labels == 1]
            if prompts.box is not None:
                notes.append(f"{self.spec.name} takes boxes only: the {prompts.n_clicks} click(s) were not used.")
            elif len(positives) >= 2 and np.ptp(positives, axis=0).min() >= 4:
                # Clicks on a structure's extremes outline it: their bounding box is a fair box prompt.
                box = np.concatenate([positives.min(axis=0), positives.max(axis=0)])
                prompts = prompts.with_box(box)
                notes.append(f"{self.spec.name} takes boxes only: used the box spanned by the "
                             f"{len(positives)} positive clicks, {np.round(box).astype(int).tolist()}.")
            else:
                raise UnsupportedPromptError(
                    f"{self.spec.name} was trained with boxes only and returns empty masks for clicks. Draw a box "
                    "(or click two diagonally opposite corners of the structure, at least 4 pixels apart in x and "
                    "in y), or choose a click-capable model such as litemedsam_clicks.")
            prompts = prompts.without_points()
        if prompts.kinds == {PromptKind.MASK} and (PromptKind.MASK not in kinds or not self.spec.mask_alone):
            # a decoder trained with its masks fed back beside clicks or a box returns empty masks for one alone
            more = "a box or a click" if PromptKind.POINT in kinds else "a box"
            raise UnsupportedPromptError(f"{self.spec.name} cannot segment from a mask prompt alone; add {more}.")
        if prompts.mask_logits is not None and PromptKind.MASK not in kinds:
            # used as given (the tracker holds a structure through dropout frames with it), but said: fed back
            # after a box, the model's own logits can lower its Dice
            notes.append(f"{self.spec.name} was not trained with mask prompts: the mask was used as given.")
        return prompts, notes
