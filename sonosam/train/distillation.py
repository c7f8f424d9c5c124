"""SonoSAMLite distillation: a smaller TinyViT image encoder with the teacher's prompt encoder and mask
decoder (initialised from the teacher's). The default student keeps the teacher's stage widths with fewer
blocks per stage, each taken from the teacher's (``kept_blocks``), and copies its patch embedding,
downsampling layers and neck (``STUDENTS``). Two stages:

1. (optional, ``warmup_epochs``) embedding distillation, MobileSAM's "decoupled distillation": the student
   encoder alone learns to reproduce the teacher's cached image embeddings (``embedding_loss``: squared
   error relative to the teacher's mean square); no labels, no prompts.
2. the main objective, on the labelled samples, for every parameter of the student:

       loss = (1 - a) * DiceFocal(student, gt) + a * KL(student || teacher_best),   a = 0.1
              [+ embedding_weight * embedding_loss]

   where ``teacher_best`` is the teacher's mask logits at the iteration of the iterative prompt simulation
   that gave its best Dice ("best-mask distillation"); the student sees the same prompts, iteration by
   iteration, with its own previous logits fed back as the mask prompt when the teacher takes mask prompts
   (``litemedsam_clicks`` does not). The teacher is frozen and its embeddings come from the disk cache.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..evaluate.datasets import Sample
from ..models import SamModel, _build_litemedsam
from .cache import EmbeddingStore, input_size_for
from .engine import PromptDecoder, autocast, iterate_prompts, low_res_target
from .finetune import clickable
from .losses import bernoulli_kl, dice_focal_loss, embedding_loss, hard_dice
from .prompts import PromptSampler

__all__ = ["DistillConfig", "DistillResult", "distill", "STUDENTS", "DEFAULT_STUDENT", "student_encoder_config",
           "build_student", "click_capable", "kept_blocks", "inherited_encoder_state", "count_parameters",
           "image_grouped_order"]

# LiteMedSAM's TinyViT (the teacher's encoder when the teacher is LiteMedSAM or a decoder trained over it):
# 5.7 M parameters; stage 0 is MBConv at 256x256 (stride-1 patch embedding), stages 1-3 attention blocks.
LITEMEDSAM_TINYVIT = dict(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                          num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                          drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                          layer_lr_decay=0.8)


@dataclass(frozen=True)
class StudentArch:
    """A student TinyViT: ``depths`` blocks per stage; ``from_teacher``: the teacher's widths, with the patch
    embedding, downsampling layers and neck copied and each stage's blocks taken from the teacher's
    (``kept_blocks``); else random initialisation with the given widths."""
    depths: tuple[int, ...]
    from_teacher: bool
    embed_dims: tuple[int, ...] | None = None      # None: the teacher's
    num_heads: tuple[int, ...] | None = None


STUDENTS = {
    "tinyvit-1121-from-teacher": StudentArch((1, 1, 2, 1), True),     # default: encoder 3.0 M, ~2x faster
    "tinyvit-2222-from-teacher": StudentArch((2, 2, 2, 2), True),     # encoder 4.5 M
    # small and random (tests; teachers whose encoder is not LiteMedSAM's TinyViT): encoder 2.1 M; the last
    # stage must stay 320 wide (this TinyViT keeps the 64x64 grid only for 320/448/576)
    "tinyvit-xs-random": StudentArch((1, 1, 1, 1), False, (16, 32, 64, 320), (1, 1, 2, 10)),
}
DEFAULT_STUDENT = "tinyvit-1121-from-teacher"


def student_arch(arch: str) -> StudentArch:
    if arch not in STUDENTS:
        raise ValueError(f"Unknown student architecture {arch!r}; choose one of {', '.join(STUDENTS)}.")
    return STUDENTS[arch]


def student_encoder_config(arch: str = DEFAULT_STUDENT) -> dict:
    """The student's TinyViT keyword arguments (stored in its checkpoint's JSON; the registry rebuilds it)."""
    a = student_arch(arch)
    config = {**LITEMEDSAM_TINYVIT, "depths": list(a.depths)}
    if a.embed_dims:
        config.update(embed_dims=list(a.embed_dims), num_heads=list(a.num_heads))
    return config


def kept_blocks(teacher_depth: int, student_depth: int) -> list[int]:
    """Which of a teacher stage's blocks a student stage keeps: evenly spaced, first and last included
    (one block: the first)."""
    if student_depth > teacher_depth:
        raise ValueError(f"a student stage cannot be deeper than the teacher's ({student_depth} > {teacher_depth})")
    return [int(i) for i in np.round(np.linspace(0, teacher_depth - 1, student_depth))]


def inherited_encoder_state(teacher_encoder: torch.nn.Module, depths: Sequence[int]) -> tuple[dict, dict]:
    """The student encoder's state dict taken from the teacher's TinyViT: every block ``layers.S.blocks.K``
    of the student is the teacher's ``layers.S.blocks.kept_blocks(..)[K]``; everything else (patch embedding,
    downsampling, neck) is copied. Returns (state, {student key: teacher key})."""
    teacher_depths = [len(layer.blocks) for layer in teacher_encoder.layers]
    if len(teacher_depths) != len(depths):
        raise ValueError(f"the teacher's TinyViT has {len(teacher_depths)} stages, the student {len(depths)}")
    source = {}
    for stage, (t_depth, s_depth) in enumerate(zip(teacher_depths, depths)):
        for k, j in enumerate(kept_blocks(t_depth, s_depth)):
            source[f"layers.{stage}.blocks.{k}."] = f"layers.{stage}.blocks.{j}."
    teacher_state = teacher_encoder.state_dict()
    state, origin = {}, {}
    block = re.compile(r"layers\.\d+\.blocks\.\d+\.")
    for key, value in teacher_state.items():
        if not block.match(key):   # patch embedding, downsampling, neck
            state[key], origin[key] = value.clone(), key
    for student_prefix, teacher_prefix in source.items():
        for key, value in teacher_state.items():
            if key.startswith(teacher_prefix):
                new = student_prefix + key[len(teacher_prefix):]
                state[new], origin[new] = value.clone(), key
    return state, origin


def click_capable(teacher: SamModel) -> SamModel:
    """The teacher as it is imitated and scored: itself when it takes clicks, else declared click-capable."""
    return teacher if "point" in teacher.spec.prompt_kinds else clickable(teacher)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_student(teacher: SamModel, arch: str = DEFAULT_STUDENT) -> tuple[SamModel, dict]:
    """A LiteMedSAM-design model (256 px input, min-max intensity, 256x64x64 embeddings) with a smaller
    TinyViT encoder (``STUDENTS[arch]``: from the teacher's blocks, or random) and the teacher's prompt
    encoder and mask decoder weights; it declares the teacher's prompt kinds (points when the teacher is
    box-only: it is trained with clicks)."""
    a = student_arch(arch)
    encoder = student_encoder_config(arch)
    sam = _build_litemedsam(encoder)
    teacher_state = teacher.sam.state_dict()
    state = {k: v for k, v in teacher_state.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    if a.from_teacher:
        try:
            encoder_state, _ = inherited_encoder_state(teacher.sam.image_encoder, a.depths)
        except (AttributeError, TypeError, ValueError) as error:
            raise ValueError(f"{arch} inherits the teacher's TinyViT blocks; {teacher.spec.name}'s encoder is not a "
                             f"TinyViT with LiteMedSAM's stages ({error}); pick a '-random' student") from None
        state.update({"image_encoder." + k: v for k, v in encoder_state.items()})
    try:
        missing = sam.load_state_dict(state, strict=a.from_teacher)
    except RuntimeError as error:
        raise ValueError(f"The teacher's weights do not fit the student {arch} ({str(error)[:300]}); distil from a "
                         "LiteMedSAM-family teacher (256-d SAM decoder, TinyViT encoder).") from None
    if any(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in missing.missing_keys):
        raise ValueError("The teacher's prompt encoder / mask decoder do not match the student's design "
                         "(256-d SAM decoder); distil from a SAM-family teacher.")
    architecture = {"type": "litemedsam-tinyvit", "encoder": dict(encoder), "student_arch": arch,
                    "from_teacher": a.from_teacher}
    spec = dataclasses.replace(teacher.spec, name=f"{teacher.spec.name}_student_{arch}", image_size=256,
                               normalization="minmax", prompt_kinds=click_capable(teacher).spec.prompt_kinds,
                               multimask=False, build=lambda: _build_litemedsam(encoder), architecture=architecture,
                               base_model="litemedsam")   # the registered model of its design (save_checkpoint)
    student = SamModel(spec, sam.to(teacher.device).eval(), None)
    return student, architecture


@dataclass
class DistillConfig:
    epochs: int = 50                  # epochs of the main (mask-loss) stage
    batch_size: int = 8               # samples per step; ordered by image, so a step encodes one or two images
    lr: float = 1e-4
    lr_step: int = 25
    lr_gamma: float = 0.5
    alpha: float = 0.1                # weight of KL(student || teacher_best)
    max_corrections: int = 4
    point_jitter: float = 0.2
    box_jitter: float = 0.2
    point_start: float = 0.5          # probability that a sample's first prompt is a click (else a loose box)
    samples_per_epoch: int | None = None   # cap per main-stage epoch (a random image-ordered subset)
    warmup_epochs: int = 3            # embedding-distillation passes over the warm-up images before the mask loss
    warmup_lr: float = 1e-3          # Adam, cosine decay to 0 over the warm-up
    warmup_batch: int = 2             # images per warm-up step
    embedding_weight: float = 0.5     # weight of the embedding loss added to the mask loss in the main stage
    train_decoder: bool = False       # the main stage also trains the prompt encoder + mask decoder (else they
                                      # stay the teacher's and only the encoder learns)
    seed: int = 0
    amp: bool = True
    max_steps: int | None = None      # optimizer steps in all (warm-up + main)
    cache_dir: str | None = None
    init: str | None = None           # a saved student (checkpoint path) whose image encoder the student starts from
    progress: bool = True
    probe_samples: int = 4            # fixed probe batch for a comparable before/after loss

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclass
class DistillResult:
    losses: list[float] = field(default_factory=list)      # per main-stage step: the mask loss (+ embedding term)
    dice: list[float] = field(default_factory=list)
    warmup_losses: list[float] = field(default_factory=list)   # per warm-up step: embedding loss
    epochs: list[dict] = field(default_factory=list)       # per epoch: stage, loss(es), dice, seconds
    teacher_parameters: int = 0
    student_parameters: int = 0
    teacher_encoder_parameters: int = 0
    student_encoder_parameters: int = 0
    inherited: dict = field(default_factory=dict)          # student encoder key -> the teacher key it copies
    student: SamModel | None = None
    checkpoint: object = None
    seconds: float = 0.0
    probe_loss_before: float = math.nan   # mask loss on a fixed probe batch (fixed prompts) before / after training
    probe_loss_after: float = math.nan
    probe_embedding_before: float = math.nan   # embedding loss on the probe images before / after
    probe_embedding_after: float = math.nan


def image_grouped_order(keys: Sequence, rng: np.random.Generator) -> list[int]:
    """Sample indices in a random order that keeps each image's samples together (images shuffled, samples
    shuffled within an image): a batch then holds the structures of one or two images, and the student's
    encoder (trained, not cached) runs once per image of the batch."""
    groups: dict = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    members = list(groups.values())
    return [int(members[g][i]) for g in rng.permutation(len(members)) for i in rng.permutation(len(members[g]))]


def distill(teacher: SamModel, train: Sequence[Sample], config: DistillConfig | None = None, *,
            arch: str = DEFAULT_STUDENT, warmup_images: Sequence[np.ndarray] | None = None, output=None,
            name: str | None = None, data_summary: dict | None = None, log=print) -> DistillResult:
    """Train a student (``build_student``) from ``teacher``: ``config.warmup_epochs`` of embedding
    distillation on ``warmup_images`` (default: the training samples' images; no labels needed), then the
    mask loss (module doc) on ``train``. Saves the final student with metadata to ``output`` when given."""
    from .checkpoint import save_checkpoint
    from .data import unique_images

    config = config or DistillConfig()
    torch.manual_seed(config.seed)
    device = teacher.device
    mask_feedback = "mask" in click_capable(teacher).spec.prompt_kinds   # as the teacher was trained and is used
    student, architecture = build_student(teacher, arch)
    if config.init:   # continue an earlier run's encoder (same architecture) instead of the teacher's blocks
        from ..models import load_model

        earlier = load_model(config.init, device=str(device))
        try:
            student.sam.image_encoder.load_state_dict(earlier.sam.image_encoder.state_dict())
        except RuntimeError as error:
            raise ValueError(f"{config.init}'s image encoder is not a {arch} student ({str(error)[:200]}); give the "
                             "arch it was trained with.") from None
    result = DistillResult(teacher_parameters=count_parameters(teacher.sam),
                           student_parameters=count_parameters(student.sam),
                           teacher_encoder_parameters=count_parameters(teacher.sam.image_encoder),
                           student_encoder_parameters=count_parameters(student.sam.image_encoder), student=student)
    if architecture["from_teacher"]:
        result.inherited = inherited_encoder_state(teacher.sam.image_encoder, architecture["encoder"]["depths"])[1]
    if log:
        log(f"teacher {teacher.spec.name}: {result.teacher_parameters:,} parameters "
            f"(encoder {result.teacher_encoder_parameters:,}); student {arch}: {result.student_parameters:,} "
            f"(encoder {result.student_encoder_parameters:,}"
            + (", blocks from the teacher's)" if architecture["from_teacher"] else ", random)"))
    if config.cache_dir is None:
        import tempfile

        config.cache_dir = tempfile.mkdtemp(prefix="sonosam-embeddings-")
    warmup_images = list(warmup_images) if warmup_images is not None else unique_images(train)
    store = EmbeddingStore(config.cache_dir, teacher)
    store.precompute(unique_images(train) + (warmup_images if config.warmup_epochs else []), progress=config.progress)
    teacher_net = PromptDecoder(teacher.sam.prompt_encoder, teacher.sam.mask_decoder).eval()
    for p in teacher.sam.parameters():
        p.requires_grad_(False)
    student_net = PromptDecoder(student.sam.prompt_encoder, student.sam.mask_decoder)
    scaler = torch.amp.GradScaler("cuda") if (config.amp and device.type == "cuda") else None
    inputs: dict[int, torch.Tensor] = {}   # student encoder inputs, preprocessed once per image

    def student_input(image) -> torch.Tensor:
        if id(image) not in inputs:
            with torch.no_grad():
                inputs[id(image)] = student.preprocess(image)[0][0].cpu()
        return inputs[id(image)]

    def encode(images) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Student embeddings of ``images`` (each distinct image encoded once), per image; the embedding
        loss against the teacher's cached embeddings, per distinct image; and the index of each image."""
        distinct: dict[int, int] = {}
        index = [distinct.setdefault(id(im), len(distinct)) for im in images]
        firsts = list({id(im): im for im in images}.values())
        features = student.sam.image_encoder(torch.stack([student_input(im) for im in firsts]).to(device))
        targets = torch.stack([store.get(im).features for im in firsts]).to(device)
        return features[index], embedding_loss(features, targets), index

    def step(loss, optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    probe = list(train[:config.probe_samples])

    def probe_losses() -> tuple[float, float]:
        """Mask loss on a fixed probe batch with fixed prompts (seeded) and the embedding loss of its images,
        no gradient: comparable across training."""
        if not probe:
            return math.nan, math.nan
        student.sam.eval()
        with torch.no_grad():
            features, emb, _ = encode([s.image for s in probe])
            loss, _ = _batch_loss(teacher, teacher_net, student, student_net, store, features, probe,
                                  PromptSampler(np.random.default_rng(12345), config.point_jitter, config.box_jitter,
                                                point_start=config.point_start),
                                  2, config.alpha, device, mask_feedback)
        return float(loss), float(emb.mean())

    result.probe_loss_before, result.probe_embedding_before = probe_losses()
    steps, began = 0, time.perf_counter()

    def out_of_steps() -> bool:
        return config.max_steps is not None and steps >= config.max_steps

    def end_epoch(record: dict, t0: float) -> None:
        record["seconds"] = time.perf_counter() - t0
        result.epochs.append(record)
        if log:
            text = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "stage", "seconds"))
            log(f"{record['stage']} epoch {record['epoch']}: {text}, {record['seconds']:.1f} s")

    # stage 1: embedding distillation (MobileSAM's decoupled distillation): the encoder alone
    if config.warmup_epochs:
        optimizer = torch.optim.Adam(student.sam.image_encoder.parameters(), lr=config.warmup_lr)
        per_epoch = math.ceil(len(warmup_images) / config.warmup_batch)   # cosine decay to 0 over the stage
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.warmup_epochs * per_epoch)
        for epoch in range(config.warmup_epochs):
            if out_of_steps():
                break
            rng, t0, losses = np.random.default_rng([config.seed, 1000 + epoch]), time.perf_counter(), []
            student.sam.image_encoder.train()
            order = rng.permutation(len(warmup_images))
            for start in range(0, len(order), config.warmup_batch):
                if out_of_steps():
                    break
                with autocast(device, config.amp):
                    _, emb, _ = encode([warmup_images[i] for i in order[start:start + config.warmup_batch]])
                step(emb.mean(), optimizer)
                cosine.step()
                steps += 1
                result.warmup_losses.append(float(emb.detach().mean()))
                losses.append(result.warmup_losses[-1])
            student.sam.eval()
            end_epoch({"stage": "embedding", "epoch": epoch + 1, "embedding_loss": float(np.mean(losses))}, t0)

    # stage 2: the loss on masks (+ the embedding term when embedding_weight > 0)
    trained = student.sam if config.train_decoder else student.sam.image_encoder
    for module in (student.sam.prompt_encoder, student.sam.mask_decoder):
        module.requires_grad_(config.train_decoder)
    optimizer = torch.optim.Adam(trained.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    keys = [s.key for s in train]
    for epoch in range(config.epochs):
        if out_of_steps():
            break
        rng = np.random.default_rng([config.seed, epoch])
        sampler = PromptSampler(rng, config.point_jitter, config.box_jitter, point_start=config.point_start)
        order = image_grouped_order(keys, rng)[:config.samples_per_epoch or None]
        losses, embeddings, dices, t0 = [], [], [], time.perf_counter()
        student.sam.train()
        for start in range(0, len(order), config.batch_size):
            if out_of_steps():
                break
            batch = [train[i] for i in order[start:start + config.batch_size]]
            n_iterations = 1 + int(rng.integers(0, config.max_corrections + 1))
            with autocast(device, config.amp):
                features, emb, _ = encode([s.image for s in batch])
                loss, last_dice = _batch_loss(teacher, teacher_net, student, student_net, store, features, batch,
                                              sampler, n_iterations, config.alpha, device, mask_feedback)
                total = loss + config.embedding_weight * emb.mean() if config.embedding_weight else loss
            step(total, optimizer)
            steps += 1
            result.losses.append(float(total.detach()))
            result.dice.append(float(np.mean(last_dice)))
            losses.append(float(loss.detach()))
            embeddings.append(float(emb.detach().mean()))
            dices.append(result.dice[-1])
        scheduler.step()
        student.sam.eval()
        end_epoch({"stage": "mask", "epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else math.nan,
                   "embedding_loss": float(np.mean(embeddings)) if embeddings else math.nan,
                   "train_dice": float(np.mean(dices)) if dices else math.nan}, t0)
    result.seconds = time.perf_counter() - began
    result.probe_loss_after, result.probe_embedding_after = probe_losses()
    if log and probe:
        log(f"fixed-probe mask loss {result.probe_loss_before:.4f} -> {result.probe_loss_after:.4f}, embedding loss "
            f"{result.probe_embedding_before:.4f} -> {result.probe_embedding_after:.4f}; {result.seconds:.0f} s")
    elif log:   # the embedding stage alone: no mask-stage sample to probe
        log(f"no mask stage; {result.seconds:.0f} s")
    if output is not None:
        result.checkpoint = save_checkpoint(
            student, output, name=name, kind="distill", weights="full", architecture=architecture,
            base_model="litemedsam",
            training={"config": config.to_dict(), "teacher": teacher.spec.name, "mask_feedback": mask_feedback,
                      "teacher_parameters": result.teacher_parameters, "student_parameters": result.student_parameters,
                      "teacher_encoder_parameters": result.teacher_encoder_parameters,
                      "student_encoder_parameters": result.student_encoder_parameters,
                      "data": data_summary or {"train_samples": len(train)},
                      "warmup_images": len(warmup_images) if config.warmup_epochs else 0,
                      "epochs": result.epochs, "seconds": result.seconds})
    return result


def _batch_loss(teacher, teacher_net, student, student_net, store, features, batch, sampler, n_iterations, alpha,
                device, mask_feedback=True):
    """The distillation loss of one batch: the teacher's interactive session (no gradient, prompts and
    logits of every iteration), then the student (embeddings ``features``) replaying those prompts with its
    own logits fed back (when ``mask_feedback``)."""
    gts = [s.mask for s in batch]
    t_sizes = [(tuple(s.image.shape[:2]), input_size_for(tuple(s.image.shape[:2]), teacher.spec.image_size))
               for s in batch]
    s_sizes = [(o, input_size_for(o, 256)) for o, _ in t_sizes]
    targets = torch.stack([low_res_target(s.mask, s_sizes[i][1], 256) for i, s in enumerate(batch)]).to(device)
    teacher_features = torch.stack([store.get(s.image).features for s in batch]).to(device)
    with torch.no_grad():
        history, teacher_logits = iterate_prompts(
            lambda idx, t, m: teacher_net(teacher_features[idx], t.points, t.boxes, m), gts, t_sizes, sampler,
            teacher.transform, teacher.spec.image_size, n_iterations, device, mask_feedback=mask_feedback)
    teacher_targets = low_res_teacher_best(teacher_logits, targets)
    parts, last_dice = [], []

    def on_output(iteration, indices, logits, iou, final=False, prompts=None):
        seg = dice_focal_loss(logits, targets[indices])
        kl = bernoulli_kl(logits, teacher_targets[indices])
        parts.append(((1 - alpha) * seg + alpha * kl).sum())
        if iteration == n_iterations - 1:
            last_dice.extend(hard_dice(logits.detach(), targets[indices]).tolist())

    iterate_prompts(lambda idx, t, m: student_net(features[idx], t.points, t.boxes, m), gts, s_sizes, sampler,
                    student.transform, 256, n_iterations, device, on_output, replay=history,
                    mask_feedback=mask_feedback)
    return torch.stack(parts).sum() / (len(batch) * n_iterations), last_dice


def low_res_teacher_best(teacher_logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Per sample, the teacher's logits at the iteration with the best (hard, low-res) Dice."""
    stacked = torch.stack(teacher_logits)                    # (T, B, 1, 256, 256)
    dice = torch.stack([hard_dice(l, targets) for l in teacher_logits])   # (T, B)
    best = dice.argmax(0)
    return stacked[best, torch.arange(stacked.shape[1])]
