"""Decoder fine-tuning (SonoSAM): frozen image encoder, embeddings cached on disk, prompt encoder +
mask decoder trained with DiceFocal loss and the iterative prompt simulation (``prompts``).

    from sonosam.train import TrainConfig, train_decoder
    result = train_decoder(load_model("litemedsam"), train_samples, val_samples, TrainConfig(epochs=50),
                           output="runs/my_decoder.pth")
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..evaluate.datasets import Sample
from ..models import SamModel
from .cache import EmbeddingStore, input_size_for
from .engine import Dist, PromptDecoder, autocast, iterate_prompts, low_res_target, setup_distributed
from .losses import bernoulli_kl, click_loss, hard_dice, prompt_loss
from .prompts import PromptSampler, to_model_inputs

__all__ = ["TrainConfig", "TrainResult", "train_decoder", "clickable", "trainable_parameters", "LiveEncoder"]

CLICK_KINDS = frozenset({"point", "box", "mask"})


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    lr_step: int = 25                 # epochs between learning-rate drops
    lr_gamma: float = 0.5             # the drop
    weight_decay: float = 0.0
    max_corrections: int = 4          # corrective-click iterations after the first prompt: 0..this, per batch
    point_jitter: float = 0.2         # first click: up to 20 % of the structure's size from the centroid
    box_jitter: float = 0.2           # first box: each side moved by up to 20 % of the box size
    iou_weight: float = 1.0           # MSE of the IoU head against the real IoU
    mask_loss: str = "dice_focal"     # losses.MASK_LOSSES: SAM's DiceFocal, or "bce_dice" (BCE + soft Dice)
    click_weight: float = 0.0         # x the cross-entropy under each click (losses.click_loss): follow every click
    box_keep: float = 0.0             # x KL toward the starting decoder's answer to a box alone (``train_decoder``'s
                                      # ``anchor``): clicks are learned without losing what the box gave
    box_keep_every: bool = False      # box_keep also on a jittered box drawn for every sample of every step (one
                                      # more forward), not only on the box starts (a tenth of CT's draws in v6)
    mask_feedback: bool = True        # feed the previous low-res logits back as the mask prompt (False: the
                                      # decoder is trained, validated and declared without "mask" prompts)
    mask_feedback_p: float = 1.0      # with mask_feedback: probability, per corrective iteration, that the
                                      # previous logits are fed back (else clicks alone, as at a fresh start)
    point_start: float = 0.5          # probability that the first prompt is a click (else a loose box)
    grad_iterations: int | None = None    # None: every prompt iteration is in the loss; n: only the batch's last
                                      # iteration and n - 1 others drawn at random (the rest run without autograd:
                                      # ~7x cheaper on CPU, so more corrected samples per CPU minute)
    val_score: str = "ends"           # "ends": mean of Dice@1, Dice@val_clicks and box; "curve": mean of every
                                      # Dice@1..val_clicks and box (rewards corrections that converge)
    samples_per_epoch: int | None = None   # cap (random subset each epoch) for frequent validation
    val_samples: int | None = 64      # validation subset (evenly spaced, fixed) for the best-checkpoint choice
    val_clicks: int = 3
    seed: int = 0
    amp: bool = True                  # mixed precision on CUDA
    max_steps: int | None = None      # stop after this many optimizer steps (tests, smoke runs)
    cache_dir: str | None = None      # embeddings on disk; None: a temporary folder... see train_decoder
    use_cache: bool = True            # False: run the encoder on every step (for the benchmark)
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)       # per optimizer step
    dice: list[float] = field(default_factory=list)         # per step: hard Dice of the last iteration (low res)
    epochs: list[dict] = field(default_factory=list)        # per epoch: loss, dice, val metrics, seconds, lr
    best: dict | None = None
    checkpoint: Path | None = None
    metadata: Path | None = None
    steps: int = 0
    seconds: float = 0.0
    epochs_run: int = 0                                      # epochs this call ran (0: a finished run resumed)

    def epoch_loss(self, index: int) -> float:
        return self.epochs[index]["loss"]


def clickable(model: SamModel, mask: bool = True) -> SamModel:
    """The same network declared as taking points, boxes and masks (what a click-trained decoder is),
    single-mask output. Shares the weights with ``model``. ``mask=False``: declared without mask prompts
    (a decoder trained without the previous logits fed back; callers that honour ``prompt_kinds`` - the
    evaluation harness, the Slicer modules, volume propagation, tracking - then never pass them)."""
    kinds = CLICK_KINDS if mask else CLICK_KINDS - {"mask"}
    spec = dataclasses.replace(model.spec, prompt_kinds=kinds, multimask=False)
    view = SamModel(spec, model.sam, model.checkpoint)
    view.model_id = model.model_id
    return view


def trainable_parameters(sam) -> list[torch.nn.Parameter]:
    """Freeze the image encoder; the prompt encoder and mask decoder are trained."""
    for p in sam.image_encoder.parameters():
        p.requires_grad_(False)
    params = []
    for module in (sam.prompt_encoder, sam.mask_decoder):
        for p in module.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


class LiveEncoder:
    """The no-cache path (benchmark): runs the frozen encoder every time an embedding is asked for."""

    def __init__(self, model):
        self.model = model
        self.encoder_calls = 0

    def get(self, image, window=None, key=None):
        from .cache import CachedEmbedding

        embedding = self.model.encode(image, window)
        self.encoder_calls += 1
        return CachedEmbedding(embedding.features[0].float().cpu(), tuple(np.asarray(image).shape[:2]),
                               input_size_for(tuple(np.asarray(image).shape[:2]), self.model.spec.image_size))

    def precompute(self, images, window=None, progress=True):
        return 0


class _Item:
    __slots__ = ("sample", "key", "target", "sizes")

    def __init__(self, sample: Sample, key: str, target: torch.Tensor, sizes):
        self.sample, self.key, self.target, self.sizes = sample, key, target, sizes


def _items(samples: Sequence[Sample], store, image_size: int) -> list[_Item]:
    items, keys = [], {}
    for s in samples:
        ident = id(s.image)
        if ident not in keys:
            keys[ident] = store.key(s.image) if hasattr(store, "key") else None
        shape = tuple(np.asarray(s.image).shape[:2])
        input_size = input_size_for(shape, image_size)
        items.append(_Item(s, keys[ident], low_res_target(s.mask, input_size, image_size), (shape, input_size)))
    return items


def _progress(total, desc, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, leave=False)


def run_epoch(net, sam_model: SamModel, items: list[_Item], store, optimizer, config: TrainConfig,
              rng: np.random.Generator, device, scaler, dist: Dist, result: TrainResult, desc: str = "train",
              weights: np.ndarray | None = None, anchor: PromptDecoder | None = None) -> dict:
    """One pass over ``items`` (this rank's share) with the iterative prompt simulation. ``weights``: draw
    ``samples_per_epoch`` items with these probabilities (with replacement) instead of a permutation.
    ``anchor``: the frozen decoder that ``config.box_keep`` pulls box-alone answers toward."""
    sampler = PromptSampler(rng, config.point_jitter, config.box_jitter, point_start=config.point_start)
    if weights is not None:
        order = rng.choice(len(items), size=config.samples_per_epoch or len(items), replace=True, p=weights)
    else:
        order = rng.permutation(len(items))
    if config.samples_per_epoch:
        order = order[:config.samples_per_epoch]
    order = order[:len(order) - len(order) % dist.world][dist.rank::dist.world]   # equal steps on every rank
    image_size = sam_model.spec.image_size
    bar = _progress(len(order), desc, config.progress and dist.main)
    sync = getattr(net, "no_sync", None)

    def step_context(final):   # DDP: forward + backward under no_sync except the batch's last output, so the
        return sync() if (sync is not None and not final) else _null()   # gradients are all-reduced once a step
    losses, dices, began = [], [], time.perf_counter()
    for start in range(0, len(order), config.batch_size):
        if config.max_steps is not None and result.steps >= config.max_steps:
            break
        batch = [items[i] for i in order[start:start + config.batch_size]]
        features = torch.stack([store.get(it.sample.image, key=it.key).features for it in batch]).to(device)
        targets = torch.stack([it.target for it in batch]).to(device)
        n_iterations = 1 + int(rng.integers(0, config.max_corrections + 1))
        feedback = None   # always fed back (no draw, so p = 1 keeps the random stream of earlier runs)
        if config.mask_feedback_p < 1:
            feedback = [True] + [bool(rng.random() < config.mask_feedback_p) for _ in range(n_iterations - 1)]
        graded = None     # every iteration in the loss (no draw: keeps the random stream of earlier runs)
        if config.grad_iterations is not None:
            others = rng.permutation(n_iterations - 1)[:max(config.grad_iterations - 1, 0)]
            graded = {n_iterations - 1, *others.tolist()}   # the last always: DDP syncs gradients on it
        n_graded = n_iterations if graded is None else len(graded)
        batch_loss, last_dice = [0.0], [None]
        optimizer.zero_grad(set_to_none=True)

        def forward(indices, tensors, mask_in):
            with autocast(device, config.amp):
                return net(features[indices], tensors.points, tensors.boxes, mask_in)

        def box_kept(feats, boxes, logits):   # box_keep's term: KL toward the anchor's answer to the same box alone
            with torch.no_grad(), autocast(device, config.amp):
                kept, _ = anchor(feats, None, boxes, None)
            return config.box_keep * bernoulli_kl(logits, kept).sum()

        def backward(total):   # one output's share of the step's loss
            total = total / (len(batch) * n_graded)
            (scaler.scale(total) if scaler is not None else total).backward()
            batch_loss[0] += float(total.detach())

        def on_output(iteration, indices, logits, iou, final=False, prompts=None):
            if graded is not None and iteration not in graded:
                return
            target = targets[indices]
            total = prompt_loss(logits, iou, target, config.iou_weight, config.mask_loss).sum()
            if config.click_weight and prompts.points is not None:
                total = total + config.click_weight * click_loss(logits, *prompts.points, image_size).sum()
            if config.box_keep and anchor is not None and prompts.points is None and prompts.boxes is not None:
                total = total + box_kept(features[indices], prompts.boxes, logits)
            backward(total)
            if iteration == n_iterations - 1:
                d = hard_dice(logits.detach(), target)
                last_dice[0] = (last_dice[0] or []) + d.tolist()

        if config.box_keep and config.box_keep_every and anchor is not None:
            # before the prompt loop: under DDP its last output is where gradients are all-reduced
            boxes = [sampler.start(it.sample.mask, kind="box") for it in batch]
            tensors = to_model_inputs(boxes, [it.sizes[0] for it in batch], sam_model.transform, device)
            with step_context(False):
                with autocast(device, config.amp):
                    logits, _ = net(features, None, tensors.boxes, None)
                backward(box_kept(features, tensors.boxes, logits))
        iterate_prompts(forward, [it.sample.mask for it in batch], [it.sizes for it in batch], sampler,
                        sam_model.transform, image_size, n_iterations, device, on_output,
                        mask_feedback=config.mask_feedback, feedback_draws=feedback, step_context=step_context,
                        graded=graded)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        result.steps += 1
        result.losses.append(batch_loss[0])
        result.dice.append(float(np.mean(last_dice[0])))
        losses.append(batch_loss[0])
        dices.append(result.dice[-1])
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", dice=f"{np.mean(dices[-20:]):.3f}")
    if bar is not None:
        bar.close()
    return {"loss": float(np.mean(losses)) if losses else math.nan,
            "dice": float(np.mean(dices)) if dices else math.nan,
            "seconds": time.perf_counter() - began, "steps": len(losses)}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _validation_subset(samples: Sequence[Sample], n: int | None) -> list[Sample]:
    if n is None or len(samples) <= n:
        return list(samples)
    picks = np.unique(np.round(np.linspace(0, len(samples) - 1, n)).astype(int))
    return [samples[i] for i in picks]


def validation_score(metrics: dict, mode: str = "ends") -> float:
    """What 'best' means: mean Dice over the 1st click, the last validation click and the box ("ends"), or
    over every click 1..last and the box ("curve")."""
    clicks = range(1, metrics["clicks"] + 1) if mode == "curve" else (1, metrics["clicks"])
    keys = list(dict.fromkeys([f"dice@{k}" for k in clicks] + ["box"]))
    values = [metrics[k] for k in keys if not math.isnan(metrics.get(k, math.nan))]
    return float(np.mean(values)) if values else math.nan


def _protocol(config: TrainConfig, **override) -> dict:
    """What the validation score depends on (a resumed run whose protocol differs chooses its best anew)."""
    protocol = {"val_clicks": config.val_clicks, "mask_feedback": config.mask_feedback,
                "mask_feedback_p": config.mask_feedback_p,
                "val_samples": config.val_samples, **({"val_score": config.val_score} if config.val_score != "ends" else {})}
    protocol.update(override)
    return protocol


def check_decoder_run(model: SamModel, output=None, name: str | None = None, save_weights: str = "full") -> None:
    """What ``train_decoder`` refuses before any work (the command line asks before reading the data): a model
    answering box sessions with a second decoder (which one would be trained?), a checkpoint name that is a
    built-in model's, and a decoder-only save of a model whose encoder is not its base model's."""
    from ..errors import TrainingError
    from .checkpoint import check_decoder_base, checkpoint_name

    if model.box_session_model is not None:
        raise TrainingError(f"{model.spec.name} answers box sessions with a second decoder, so which one to train is "
                            "ambiguous; train the other decoder by its own model (e.g. --model litemedsam_clicks), the "
                            "box-session one with python -m sonosam.train.box_decoder.")
    if output is not None:
        checkpoint_name(output, name)
        if save_weights == "decoder":
            check_decoder_base(model)


def _read_resume(path: Path, sam, optimizer, scheduler) -> dict:
    """Load ``path`` (written by train_decoder after each epoch) into the decoder, optimizer and scheduler."""
    from ..errors import TrainingError

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        sam.prompt_encoder.load_state_dict(state["prompt_encoder"])
        sam.mask_decoder.load_state_dict(state["mask_decoder"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        int(state["epoch"]), float(state["best_score"])
        return state
    except Exception as error:  # noqa: BLE001 - truncated, foreign or another model's: one line, naming the file
        first = (str(error).strip().splitlines() or [""])[0][:120]
        raise TrainingError(f"{path} is not a resume file of this run ({type(error).__name__}: {first}); delete it "
                            "and start again without --resume (with --overwrite to replace the output).") from None


def train_decoder(model: SamModel, train: Sequence[Sample], val: Sequence[Sample], config: TrainConfig | None = None,
                  output: str | Path | None = None, *, resume: bool = False, name: str | None = None,
                  data_summary: dict | None = None, save_weights: str = "full", log=print,
                  sample_weights: Sequence[float] | None = None, anchor: SamModel | None = None) -> TrainResult:
    """Fine-tune ``model``'s prompt encoder and mask decoder in place (module doc). Writes, on rank 0,
    ``output`` (best validation checkpoint) + its ``.json`` metadata, and ``output``.resume (for
    ``resume=True``) after every epoch. ``sample_weights`` (one per training sample): each epoch draws
    ``samples_per_epoch`` samples with these relative weights (e.g. to balance data sources). ``anchor``: the
    decoder whose answers to a box alone ``config.box_keep`` keeps (default: a frozen copy of ``model`` as it
    is now; pass the starting decoder when training epoch by epoch with ``resume``). Returns the per-step and
    per-epoch record."""
    from .checkpoint import save_checkpoint
    from .validate import evaluate_cached

    check_decoder_run(model, output, name, save_weights)
    if model.backend != "eager":   # an exported ONNX graph keeps the old weights: run the modules being trained
        model.use_backend("eager")
    config = config or TrainConfig()
    device = model.device
    dist = setup_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        model.sam.to(device)
    torch.manual_seed(config.seed)
    sam = model.sam
    params = trainable_parameters(sam)
    view = clickable(model, mask=config.mask_feedback)
    if config.cache_dir is None:
        import tempfile

        config.cache_dir = tempfile.mkdtemp(prefix="sonosam-embeddings-")
    store = EmbeddingStore(config.cache_dir, model) if config.use_cache else LiveEncoder(model)
    if dist.main and config.use_cache:
        store.precompute([s.image for s in list(train) + list(val)], progress=config.progress)
    if dist.enabled:
        torch.distributed.barrier()
    items = _items(train, store, model.spec.image_size)
    weights = None
    if sample_weights is not None:
        weights = np.asarray(sample_weights, dtype=np.float64)
        if weights.shape != (len(items),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"sample_weights must be {len(items)} non-negative numbers, not all zero")
        weights = weights / weights.sum()
    val_subset = _validation_subset(val, config.val_samples)

    net: torch.nn.Module = PromptDecoder(sam.prompt_encoder, sam.mask_decoder)
    frozen = None
    if config.box_keep:
        source = anchor.sam if anchor is not None else sam
        frozen = copy.deepcopy(PromptDecoder(source.prompt_encoder, source.mask_decoder)).float().to(device).eval()
        frozen.requires_grad_(False)
    if dist.enabled:
        # find_unused_parameters: a step without boxes (or without a mask prompt) leaves those embeddings unused
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[dist.local_rank] if device.type == "cuda" else None, find_unused_parameters=True,
            broadcast_buffers=False)   # the only buffer (the positional encoding's matrix) never changes; ranks
                                       # run different numbers of forwards per step (prompt groups)
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    scaler = torch.amp.GradScaler("cuda") if (config.amp and device.type == "cuda") else None
    result = TrainResult()
    first_epoch, best_score = 0, -math.inf
    output = Path(output) if output else None
    resume_path = output.with_name(output.name + ".resume") if output else None
    if resume and resume_path is not None and resume_path.is_file():
        state = _read_resume(resume_path, sam, optimizer, scheduler)
        first_epoch, best_score = int(state["epoch"]) + 1, float(state["best_score"])
        saved_protocol = state.get("protocol", json.dumps(_protocol(config, mask_feedback=True, val_clicks=3)))
        if saved_protocol != json.dumps(_protocol(config)):   # scores not comparable: pick the best anew
            best_score = -math.inf
            if log and dist.main:
                log(f"validation protocol changed ({saved_protocol} -> {json.dumps(_protocol(config))}): "
                    "the best checkpoint is chosen anew")
        result.epochs = json.loads(state["history"]) if "history" in state else []
        result.steps = int(state.get("steps", 0))
        # the run's best so far (a finished run resumed has nothing left to do: its best and its files stand)
        result.best = next((r for r in result.epochs if r.get("val_score") == best_score), None)
        if result.best is not None and output.is_file() and output.with_suffix(".json").is_file():
            result.checkpoint, result.metadata = output, output.with_suffix(".json")
        if log and dist.main:
            log(f"resumed from {resume_path} at epoch {first_epoch + 1} (best validation score {best_score:.4f})")
    if log and dist.main:
        n_train = sum(p.numel() for p in params)
        log(f"training {n_train:,} prompt-encoder/decoder parameters on {len(train)} samples "
            f"({len({s.key for s in train})} images), validating on {len(val_subset)}; device {device}"
            + (f", {dist.world} processes" if dist.enabled else ""))
    began = time.perf_counter()
    for epoch in range(first_epoch, config.epochs):
        if config.max_steps is not None and result.steps >= config.max_steps:
            break
        rng = np.random.default_rng([config.seed, epoch])
        sam.train()
        sam.image_encoder.eval()
        stats = run_epoch(net, view, items, store, optimizer, config, rng, device, scaler, dist, result,
                          desc=f"epoch {epoch + 1}/{config.epochs}", weights=weights, anchor=frozen)
        scheduler.step()
        sam.eval()
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **stats}
        if dist.main and val_subset:
            metrics = evaluate_cached(view, store, val_subset, n_clicks=config.val_clicks, progress=False)
            record["val"] = metrics
            score = validation_score(metrics, config.val_score)
            record["val_score"] = score
            if score > best_score:
                best_score = score
                result.best = record
                if output is not None:
                    summary = dict(data_summary or {})
                    summary.setdefault("train_samples", len(train))
                    summary.setdefault("val_samples", len(val))
                    result.checkpoint, result.metadata = save_checkpoint(
                        view, output, name=name, kind="decoder", weights=save_weights,
                        training={"config": config.to_dict(), "data": summary, "best_epoch": epoch + 1,
                                  "validation": metrics})
        result.epochs.append(record)
        result.epochs_run += 1
        if log and dist.main:
            val_text = ""
            if "val" in record:
                v = record["val"]
                last = v["dice@%d" % v["clicks"]]
                val_text = (f"; val Dice click1 {v['dice@1']:.3f} click{v['clicks']} {last:.3f} "
                            f"box {v['box']:.3f}" + (" *best*" if result.best is record else ""))
            log(f"epoch {epoch + 1}: loss {stats['loss']:.4f}, train Dice {stats['dice']:.3f}, "
                f"{stats['seconds']:.1f} s{val_text}")
        if dist.main and resume_path is not None:
            state = {"prompt_encoder": sam.prompt_encoder.state_dict(), "mask_decoder": sam.mask_decoder.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                     "best_score": best_score, "steps": result.steps, "history": json.dumps(result.epochs),
                     "protocol": json.dumps(_protocol(config))}
            from ..io.atomic import atomic_output

            with atomic_output(resume_path, overwrite=True) as tmp:
                torch.save(state, tmp)
    result.seconds = time.perf_counter() - began
    return result
