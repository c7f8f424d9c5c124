"""Training: SonoSAM decoder fine-tuning and SonoSAMLite distillation (docs/training.md).

    from sonosam.models import load_model
    from sonosam.train import TrainConfig, train_decoder, colin27_split

    split = colin27_split()                                   # real MRI slices, held out by slab and structure
    model = load_model("litemedsam")
    result = train_decoder(model, split.train, split.val, TrainConfig(epochs=50), output="out/decoder.pth")
    model = load_model("out/decoder.pth")                     # through the registry, with its metadata

The image encoder is frozen and its embeddings are cached on disk (``EmbeddingStore``); prompts follow
the SonoSAM papers' iterative simulation (``PromptSampler``, built on ``sonosam.evaluate.clicks``).
"""

from .cache import EmbeddingStore, encoder_id
from .checkpoint import read_metadata, save_checkpoint
from .data import Split, colin27_split, split_by_source, thin_images, unique_images
from .engine import PromptDecoder
from .finetune import TrainConfig, TrainResult, clickable, train_decoder
from .losses import bernoulli_kl, dice_focal_loss
from .prompts import PromptSampler
from .validate import CachedPredictor, compare_table, evaluate_cached

__all__ = ["EmbeddingStore", "encoder_id", "read_metadata", "save_checkpoint", "Split", "colin27_split",
           "split_by_source", "thin_images", "unique_images", "PromptDecoder", "TrainConfig", "TrainResult",
           "clickable", "train_decoder", "bernoulli_kl", "dice_focal_loss", "PromptSampler", "CachedPredictor",
           "compare_table", "evaluate_cached", "DistillConfig", "distill", "student_encoder_config"]


def __getattr__(name):  # distillation pulls in TinyViT (timm): import it on first use
    if name in ("DistillConfig", "distill", "student_encoder_config"):
        import importlib

        return getattr(importlib.import_module(f"{__name__}.distillation"), name)
    raise AttributeError(name)
