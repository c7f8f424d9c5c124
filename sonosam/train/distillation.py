"""SonoSAMLite distillation: a smaller TinyViT image encoder with the teacher's prompt encoder and mask
decoder design (initialised from the teacher's), trained with

    loss = (1 - a) * DiceFocal(student, gt) + a * KL(student || teacher_best),   a = 0.1

where ``teacher_best`` is the teacher's mask logits at the iteration of the iterative prompt simulation
that gave its best Dice ("best-mask distillation"); the student sees the same prompts, iteration by
iteration, with its own previous logits fed back as the mask prompt. The teacher's encoder is frozen and
its embeddings come from the disk cache.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..evaluate.datasets import Sample
from ..models import SamModel, _build_litemedsam
from .cache import EmbeddingStore, input_size_for
from .engine import PromptDecoder, autocast, iterate_prompts, low_res_target
from .finetune import CLICK_KINDS, clickable
from .losses import bernoulli_kl, dice_focal_loss, soft_dice
from .prompts import PromptSampler

__all__ = ["DistillConfig", "DistillResult", "distill", "student_encoder_config", "build_student", "count_parameters"]

# LiteMedSAM's TinyViT: embed_dims [64, 128, 160, 320], depths [2, 2, 6, 2] (5.7 M parameters).
_TINYVIT_BASE = dict(img_size=256, in_chans=3, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
                     mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8, window_sizes=[7, 7, 14, 7])
STUDENTS = {
    # the last stage must stay 320 wide: this TinyViT keeps the 64x64 resolution only for 320/448/576
    "tinyvit": dict(embed_dims=[32, 64, 128, 320], depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 10]),      # 2.6 M
    "tinyvit-xs": dict(embed_dims=[16, 32, 64, 320], depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 10]),     # tests
}


def student_encoder_config(arch: str = "tinyvit") -> dict:
    if arch not in STUDENTS:
        raise ValueError(f"Unknown student architecture {arch!r}; choose one of {', '.join(STUDENTS)}.")
    return {**_TINYVIT_BASE, **STUDENTS[arch]}


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_student(teacher: SamModel, arch: str = "tinyvit") -> tuple[SamModel, dict]:
    """A LiteMedSAM-design model with a smaller TinyViT encoder (random) and the teacher's prompt encoder
    and mask decoder weights (same design: 256-channel 64x64 embeddings, 256 px input, min-max intensity)."""
    encoder = student_encoder_config(arch)
    sam = _build_litemedsam(encoder)
    teacher_state = teacher.sam.state_dict()
    decoder_state = {k: v for k, v in teacher_state.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    missing = sam.load_state_dict(decoder_state, strict=False)
    if any(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in missing.missing_keys):
        raise ValueError("The teacher's prompt encoder / mask decoder do not match the student's design "
                         "(256-d SAM decoder); distil from a SAM-family teacher.")
    spec = dataclasses.replace(teacher.spec, name=f"{teacher.spec.name}_student_{arch}", image_size=256,
                               normalization="minmax", prompt_kinds=CLICK_KINDS, multimask=False,
                               build=lambda: _build_litemedsam(encoder))
    student = SamModel(spec, sam.to(teacher.device).eval(), None)
    return student, {"type": "litemedsam-tinyvit", "encoder": dict(encoder), "student_arch": arch}


@dataclass
class DistillConfig:
    epochs: int = 50
    batch_size: int = 4
    lr: float = 1e-4
    lr_step: int = 25
    lr_gamma: float = 0.5
    alpha: float = 0.1                # weight of KL(student || teacher_best)
    max_corrections: int = 4
    point_jitter: float = 0.2
    box_jitter: float = 0.2
    seed: int = 0
    amp: bool = True
    max_steps: int | None = None
    cache_dir: str | None = None
    progress: bool = True
    probe_samples: int = 4            # fixed probe batch for a comparable before/after loss

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclass
class DistillResult:
    losses: list[float] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    teacher_parameters: int = 0
    student_parameters: int = 0
    teacher_encoder_parameters: int = 0
    student_encoder_parameters: int = 0
    student: SamModel | None = None
    checkpoint: object = None
    seconds: float = 0.0
    probe_loss_before: float = math.nan   # loss on a fixed probe batch (fixed prompts) before / after training
    probe_loss_after: float = math.nan


def distill(teacher: SamModel, train: Sequence[Sample], config: DistillConfig | None = None, *, arch: str = "tinyvit",
            output=None, name: str | None = None, data_summary: dict | None = None, log=print) -> DistillResult:
    """Train a student (``build_student``) from ``teacher`` on ``train`` (module doc); saves the final
    student with metadata to ``output`` when given."""
    from .checkpoint import save_checkpoint

    config = config or DistillConfig()
    torch.manual_seed(config.seed)
    device = teacher.device
    teacher_view = clickable(teacher) if "point" not in teacher.spec.prompt_kinds else teacher
    student, architecture = build_student(teacher, arch)
    result = DistillResult(teacher_parameters=count_parameters(teacher.sam),
                           student_parameters=count_parameters(student.sam),
                           teacher_encoder_parameters=count_parameters(teacher.sam.image_encoder),
                           student_encoder_parameters=count_parameters(student.sam.image_encoder), student=student)
    if log:
        log(f"teacher {teacher.spec.name}: {result.teacher_parameters:,} parameters "
            f"(encoder {result.teacher_encoder_parameters:,}); student {arch}: {result.student_parameters:,} "
            f"(encoder {result.student_encoder_parameters:,})")
    if config.cache_dir is None:
        import tempfile

        config.cache_dir = tempfile.mkdtemp(prefix="sonosam-embeddings-")
    store = EmbeddingStore(config.cache_dir, teacher)
    store.precompute([s.image for s in train], progress=config.progress)
    teacher_net = PromptDecoder(teacher.sam.prompt_encoder, teacher.sam.mask_decoder).eval()
    for p in teacher.sam.parameters():
        p.requires_grad_(False)
    student_net = PromptDecoder(student.sam.prompt_encoder, student.sam.mask_decoder)
    params = list(student.sam.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    scaler = torch.amp.GradScaler("cuda") if (config.amp and device.type == "cuda") else None
    inputs: dict[int, torch.Tensor] = {}   # student encoder inputs, preprocessed once per image

    def student_input(image) -> torch.Tensor:
        if id(image) not in inputs:
            with torch.no_grad():
                inputs[id(image)] = student.preprocess(image)[0][0].cpu()
        return inputs[id(image)]

    probe = list(train[:config.probe_samples])

    def probe_loss() -> float:
        """The loss on a fixed probe batch with fixed prompts (seeded), no gradient: comparable across training."""
        if not probe:
            return math.nan
        student.sam.eval()
        with torch.no_grad():
            loss, _ = _batch_loss(teacher, teacher_net, student, student_net, store, student_input, probe,
                                  PromptSampler(np.random.default_rng(12345), config.point_jitter, config.box_jitter),
                                  2, config.alpha, device)
        return float(loss)

    result.probe_loss_before = probe_loss()
    steps, began = 0, time.perf_counter()
    for epoch in range(config.epochs):
        if config.max_steps is not None and steps >= config.max_steps:
            break
        rng = np.random.default_rng([config.seed, epoch])
        sampler = PromptSampler(rng, config.point_jitter, config.box_jitter)
        order = rng.permutation(len(train))
        losses, dices, t0 = [], [], time.perf_counter()
        student.sam.train()
        for start in range(0, len(order), config.batch_size):
            if config.max_steps is not None and steps >= config.max_steps:
                break
            batch = [train[i] for i in order[start:start + config.batch_size]]
            n_iterations = 1 + int(rng.integers(0, config.max_corrections + 1))
            with autocast(device, config.amp):
                loss, last_dice = _batch_loss(teacher, teacher_net, student, student_net, store, student_input, batch,
                                              sampler, n_iterations, config.alpha, device)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            steps += 1
            result.losses.append(float(loss.detach()))
            result.dice.append(float(np.mean(last_dice)))
            losses.append(result.losses[-1])
            dices.append(result.dice[-1])
        scheduler.step()
        student.sam.eval()
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else math.nan,
                  "dice": float(np.mean(dices)) if dices else math.nan, "seconds": time.perf_counter() - t0}
        result.epochs.append(record)
        if log:
            log(f"epoch {epoch + 1}: loss {record['loss']:.4f}, train Dice {record['dice']:.3f}, {record['seconds']:.1f} s")
    result.seconds = time.perf_counter() - began
    result.probe_loss_after = probe_loss()
    if log:
        log(f"fixed-probe loss {result.probe_loss_before:.4f} -> {result.probe_loss_after:.4f}")
    if output is not None:
        result.checkpoint = save_checkpoint(
            student, output, name=name, kind="distill", weights="full", architecture=architecture,
            base_model="litemedsam",
            training={"config": config.to_dict(), "teacher": teacher.spec.name,
                      "teacher_parameters": result.teacher_parameters, "student_parameters": result.student_parameters,
                      "data": data_summary or {"train_samples": len(train)}, "epochs": result.epochs})
    return result


def _batch_loss(teacher, teacher_net, student, student_net, store, student_input, batch, sampler, n_iterations,
                alpha, device):
    """The distillation loss of one batch: the teacher's interactive session (no gradient, prompts and
    logits of every iteration), then the student replaying those prompts with its own logits fed back."""
    gts = [s.mask for s in batch]
    t_sizes = [(tuple(s.image.shape[:2]), input_size_for(tuple(s.image.shape[:2]), teacher.spec.image_size))
               for s in batch]
    s_sizes = [(o, input_size_for(o, 256)) for o, _ in t_sizes]
    targets = torch.stack([low_res_target(s.mask, s_sizes[i][1], 256) for i, s in enumerate(batch)]).to(device)
    teacher_features = torch.stack([store.get(s.image).features for s in batch]).to(device)
    with torch.no_grad():
        history, teacher_logits = iterate_prompts(
            lambda idx, t, m: teacher_net(teacher_features[idx], t.points, t.boxes, m), gts, t_sizes, sampler,
            teacher.transform, teacher.spec.image_size, n_iterations, device)
    teacher_targets = low_res_teacher_best(teacher_logits, targets)
    features = student.sam.image_encoder(torch.stack([student_input(s.image) for s in batch]).to(device))
    parts, last_dice = [], []

    def on_output(iteration, indices, logits, iou, final=False):
        seg = dice_focal_loss(logits, targets[indices])
        kl = bernoulli_kl(logits, teacher_targets[indices])
        parts.append(((1 - alpha) * seg + alpha * kl).sum())
        if iteration == n_iterations - 1:
            last_dice.extend(soft_dice((logits.detach() > 0).float() * 40 - 20, targets[indices]).tolist())

    iterate_prompts(lambda idx, t, m: student_net(features[idx], t.points, t.boxes, m), gts, s_sizes, sampler,
                    student.transform, 256, n_iterations, device, on_output, replay=history)
    return torch.stack(parts).sum() / (len(batch) * n_iterations), last_dice


def low_res_teacher_best(teacher_logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Per sample, the teacher's logits at the iteration with the best (hard, low-res) Dice."""
    stacked = torch.stack(teacher_logits)                    # (T, B, 1, 256, 256)
    dice = torch.stack([soft_dice((l > 0).float() * 40 - 20, targets) for l in teacher_logits])   # (T, B)
    best = dice.argmax(0)
    return stacked[best, torch.arange(stacked.shape[1])]
