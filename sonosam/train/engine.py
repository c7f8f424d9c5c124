"""What fine-tuning and distillation share: the batched prompt-encoder + mask-decoder module, targets,
the iterative prompt loop, devices (CUDA + mixed precision when present) and DistributedDataParallel."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..prompts import Prompts
from .prompts import PromptSampler, to_model_inputs

__all__ = ["PromptDecoder", "low_res_target", "full_res_mask", "group_by_shape", "Dist", "setup_distributed",
           "autocast", "iterate_prompts", "snapshot"]


class PromptDecoder(nn.Module):
    """SAM's prompt encoder + mask decoder as one module, batched over *different* images (SAM's own
    decoder repeats one image per prompt). Shares its parameters with the ``Sam`` it was made from."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module):
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    def forward(self, features: torch.Tensor, points=None, boxes=None, mask_logits=None, multimask: bool = False):
        """features (B, C, h, w); points ((B, N, 2), (B, N)) and boxes (B, 4) in encoder-input pixels;
        mask_logits (B, 1, 256, 256) -> low-res logits (B, M, 256, 256) and predicted IoU (B, M)."""
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_logits)
        batch = features.shape[0]
        if dense.shape[0] != batch:
            dense = dense.expand(batch, -1, -1, -1)
        decoder = self.mask_decoder
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        src = features + dense
        pos = self.prompt_encoder.get_dense_pe().expand(batch, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = decoder.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:1 + decoder.num_mask_tokens, :]
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                            dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        iou = decoder.iou_prediction_head(iou_token_out)
        picked = slice(1, None) if multimask else slice(0, 1)
        return masks[:, picked], iou[:, picked]


def low_res_target(mask: np.ndarray, input_size: tuple[int, int], image_size: int, low_res: int = 256) -> torch.Tensor:
    """The ground truth on the decoder's low-res grid: resized like the image (longest side ->
    ``image_size``), padded bottom/right to the square, then brought to ``low_res`` x ``low_res``; (1, L, L)."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    m = F.interpolate(m, size=tuple(input_size), mode="bilinear", align_corners=False)
    m = F.pad(m, (0, image_size - input_size[1], 0, image_size - input_size[0]))
    if image_size != low_res:
        m = F.interpolate(m, size=(low_res, low_res), mode="area")
    return (m[0] > 0.5).float()


def full_res_mask(logits: torch.Tensor, input_size, original_size, image_size: int) -> np.ndarray:
    """Low-res logits (1, 256, 256) -> boolean mask at the original image size (``Sam.postprocess_masks``)."""
    x = F.interpolate(logits[None].float(), (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., :input_size[0], :input_size[1]]
    x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
    return (x[0, 0] > 0).cpu().numpy()


def group_by_shape(prompts: list[Prompts]) -> list[list[int]]:
    """Indices grouped by prompt shape (click count, box or not): one decoder call per group, so every
    call sees exactly the tokens inference gives it (no extra padding tokens)."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((len(p.points), p.box is not None), []).append(i)
    return list(groups.values())


def snapshot(prompts: Prompts) -> Prompts:
    return prompts   # Prompts are immutable values: nothing to copy


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(device: torch.device | None = None) -> Dist:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT); a single process (no WORLD_SIZE or 1) runs without one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as distributed

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and (device is None or device.type == "cuda") else "gloo"
        distributed.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return Dist(rank, world, local_rank)


def autocast(device: torch.device, enabled: bool):
    """fp16 mixed precision on CUDA (with a GradScaler in the caller); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def iterate_prompts(forward, gts: list[np.ndarray], sizes: list[tuple[tuple[int, int], tuple[int, int]]],
                    sampler: PromptSampler, transform, image_size: int, n_iterations: int, device,
                    on_output=None, starts: list[Prompts] | None = None, replay: list[list[Prompts]] | None = None,
                    mask_feedback: bool = True, feedback_draws: list[bool] | None = None, step_context=None,
                    graded: set[int] | None = None, first_masks: torch.Tensor | None = None):
    """The iterative prompt loop over one batch.

    ``forward(indices, prompt_tensors, mask_logits)`` -> (logits (b, 1, 256, 256), iou (b, 1)) for the
    samples ``indices``; ``on_output(iteration, indices, logits, iou, final=, prompts=)`` sees every output (losses,
    backward; ``final`` marks the batch's last one, ``prompts`` are the ``PromptTensors`` it answered). Iteration 0 uses the first prompt (``starts``, else drawn by ``sampler``); each further
    iteration adds a click in the error region of the previous prediction and feeds its logits back as
    the mask prompt (unless ``mask_feedback`` is False; ``feedback_draws[i]`` False skips it at iteration i, so
    the decoder also learns to correct from clicks alone, as SAM's training mixes both). ``replay`` (per
    iteration, per sample) replays given prompts instead of sampling. ``step_context(final)`` -> a context
    manager around each forward + ``on_output`` (DDP's ``no_sync`` on all but the batch's last output).
    ``graded`` (None: all): the iterations whose forward keeps an autograd graph; the others run under
    ``torch.no_grad()`` (they only move the click simulation on: a forward costs ~1/7 of forward + backward).
    ``first_masks`` (b, 1, 256, 256): mask prompts for iteration 0 (a propagated slice's previous mask).
    Returns the prompts used at each iteration and the detached logits of each iteration."""
    n = len(gts)
    prompts = [snapshot(p) for p in starts] if starts is not None else [sampler.start(gt) for gt in gts]
    history_prompts, history_logits = [], []
    previous = first_masks
    for iteration in range(n_iterations):
        if replay is not None:
            prompts = replay[iteration]
        history_prompts.append([snapshot(p) for p in prompts])
        current = torch.zeros(n, 1, 256, 256, device=device)
        groups = group_by_shape(prompts)
        for number, indices in enumerate(groups):
            tensors = to_model_inputs([prompts[i] for i in indices], [sizes[i][0] for i in indices], transform, device)
            feed = mask_feedback and (feedback_draws is None or feedback_draws[iteration])
            mask_in = previous[indices] if (previous is not None and feed) else None
            final = iteration == n_iterations - 1 and number == len(groups) - 1
            grad = graded is None or iteration in graded
            with (step_context(final) if step_context is not None else contextlib.nullcontext()), \
                    torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                logits, iou = forward(indices, tensors, mask_in)
                if on_output is not None:   # final: the batch's last output (DDP syncs gradients there)
                    on_output(iteration, indices, logits, iou, final=final, prompts=tensors)
            current[indices] = logits.detach().float()
        history_logits.append(current)
        previous = current
        if iteration < n_iterations - 1 and replay is None:
            for i in range(n):
                original, input_size = sizes[i]
                pred = full_res_mask(current[i], input_size, original, image_size)
                prompts[i] = sampler.correct(pred, gts[i], prompts[i])[1]
    return history_prompts, history_logits
