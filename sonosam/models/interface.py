"""The interface a model family offers the rest of the core: what the predictor, propagation, tracking,
evaluation, the CLI and the server rely on, and nothing more.

`SamModel` (sonosam/models/sam.py) implements it for every Segment-Anything-style network (SAM, MedSAM,
LiteMedSAM and our trained decoders). Another family - a SAM2-style model with a memory bank, or a
non-SAM interactive network - is one new file with a class like this, registered with a `ModelSpec`
whose `model_class` is that class (docs/ARCHITECTURE.md, "Adding a model family"). Nothing outside
`sonosam/models/` may reach into a model's modules (`prompt_encoder`, `mask_decoder`, ...): training
code that must is written per family (sonosam/train, sonosam/adapters work on SAM-style networks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from ..prompts import Prompts
    from . import ModelSpec
    from .sam import Embedding, Prediction


@runtime_checkable
class PromptableModel(Protocol):
    spec: "ModelSpec"     # name, prompt_kinds (PromptKind), image_size, normalization, multimask
    model_id: str         # names the weights: embeddings are valid only for the model_id that made them

    @property
    def device(self) -> "torch.device": ...

    @property
    def backend(self) -> str:
        """The inference engine in use ("eager", "onnx", ...)."""

    @property
    def slab_depth(self) -> int:
        """Neighbouring slices the encoder must see together (1 for 2D encoders)."""

    def encode(self, image, window=None) -> "Embedding":
        """One 2D image (HxW any numeric dtype, or HxWx3) -> its embedding; the expensive part."""

    def encode_many(self, images, window=None, batch_size: int | None = None) -> list["Embedding"]:
        """Several images, batched where that gains (or where `batch_size` demands it)."""

    def decode(self, embedding: "Embedding", prompts: "Prompts", multimask: bool = False) -> "Prediction":
        """Masks for the prompts (pixel coordinates of the encoded image), best first. Applies the family's
        prompt rules (what kinds it takes, how it reads the others) and says how in `Prediction.notes`;
        raises UnsupportedPromptError for prompts it cannot answer."""
