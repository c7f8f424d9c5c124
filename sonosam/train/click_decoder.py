"""Train the click decoder on every source of ``click_data`` (MRI, ultrasound-style MRI, head CT, echo) with
SAM's iterative simulation, score it on each source's held-out part against the base LiteMedSAM (box) and
the current ``litemedsam_clicks``, and ship it in its place only if it wins (issue 14).

    python -m sonosam.train.click_decoder --cache runs/cache --out runs/clicks_v2 [--minutes 45] [--ship]

Training: warm start from the shipped ``litemedsam_clicks`` decoder (trained on Colin27 training slabs
only, the same slab/structure rule, so no held-out sample was ever seen); each "epoch" draws
``--samples-per-epoch`` structure-images with fixed shares per source; a first prompt (click near the
centroid or loose box, ``--point-start``) then 0..``--max-corrections`` clicks in the current error
region, the previous logits fed back as the mask prompt with probability ``--mask-feedback-p`` per
correction (``--no-mask-feedback``: never; the model then takes points and boxes only). The best epoch by
validation Dice (clicks 1 and 5 and box; ``--val-score curve``: every click 1..5 and box) is kept.
``--lr-step``/``--lr-gamma`` decay the learning rate inside the run, ``--shares`` changes the per-source
draws, and ``--mix`` pulls the kept decoder back toward ``litemedsam_clicks`` (``mix_toward``: weights
``old + alpha * (new - old)``, alpha chosen on validation by ``choose_mix``).

Ship rule (``ship_rule``, decided before any test figure of the run it judges; docs/training.md): against the
current ``litemedsam_clicks`` on the held-out sets, the mean Dice@5 over the sets is higher by >= 1 point, no
set loses more than 1 point at any click count 1..5 or with the box, and on the mean of the sets no correction
lowers the Dice by more than 1 point (Dice@(k+1) >= Dice@k - 1).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

SHIPPED_NAME = "litemedsam_clicks"
SHARES = {"mri": 0.35, "mri_us": 0.2, "ct": 0.25, "echo": 0.2}   # of each epoch's training draws
KEYS = [f"dice@{k}" for k in range(1, 6)] + ["noc@80", "noc@90", "fr@80", "fr@90", "max_dsc", "box"]


def heldout_metrics(model, store, samples, n_clicks: int = 5, clicks: bool = True, local: bool = False) -> dict:
    """The issue's table row on ``samples``: Dice@1..n (centroid start, clicks at the centre of the largest
    error region, as ``sonosam evaluate``; ``local``: with its ``local_corrections``), NoC@80/90 (n + 1 when
    never reached), FR@80/90 (%), MaxDSC, and the Dice with the tight box."""
    from ..evaluate.harness import evaluate
    from .validate import CachedPredictor

    predictor = CachedPredictor(model, store)
    out: dict = {"samples": len(samples)}
    if clicks:
        result = evaluate(predictor, samples, n_clicks=n_clicks, start="point", progress=False,
                          local_corrections=local)
        summary = result.summary()
        for k in range(n_clicks):
            out[f"dice@{k + 1}"] = float(summary["mean_dice"][k])
        out.update({k: summary[k] for k in ("noc@80", "noc@90", "fr@80", "fr@90", "max_dsc")})
        out["curves"] = result.curves
    box = evaluate(predictor, samples, n_clicks=1, start="box", progress=False)
    out["box"] = float(np.nanmean([c[0] for c in box.curves]))
    return out


def table(rows: dict[str, dict]) -> str:
    head = ("| model | Dice@1 | Dice@2 | Dice@3 | Dice@4 | Dice@5 | NoC@80 | NoC@90 | FR@80 % | FR@90 % | MaxDSC "
            "| box Dice |")
    lines = [head, "|" + "---|" * 12]
    for name, m in rows.items():
        cells = []
        for key in KEYS:
            value = m.get(key, math.nan)
            cells.append("" if value is None or (isinstance(value, float) and math.isnan(value)) else
                         f"{value:.1f}" if key.startswith(("noc", "fr")) else f"{100 * value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rows_file(out: Path, name: str, row: str, test, local: bool) -> Path:
    """Where a fixed model's held-out row on ``test`` is kept between runs: named by the test samples' pixels and
    masks too, so a set that changed (CT's window, 2026-12-04) is measured afresh, never read from an old file."""
    from ..masks import content_hash

    content = content_hash(np.array([content_hash(s.image) + content_hash(s.mask) for s in test]), digest_size=6)
    return out / "rows" / (f"{name}__{row.split()[0].strip(',')}_{len(row)}_{len(test)}_{content}"
                           f"{'_local' if local else ''}.json")


def main(argv=None) -> int:
    from ..cli import float_in

    parser = argparse.ArgumentParser(prog="python -m sonosam.train.click_decoder", description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="runs/cache")
    parser.add_argument("--out", default="runs/clicks_v2")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=None, help="stop training after this wall time")
    parser.add_argument("--samples-per-epoch", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-corrections", type=int, default=8)
    parser.add_argument("--mask-feedback-p", type=float, default=0.8)
    parser.add_argument("--no-mask-feedback", dest="mask_feedback", action="store_false",
                        help="never feed the previous logits back (the model is declared for points and boxes)")
    parser.add_argument("--grad-iterations", type=int, default=None,
                        help="prompt iterations per batch in the loss: the last + this - 1 drawn at random "
                             "(the others run without autograd; default: all)")
    parser.add_argument("--val-score", choices=("ends", "curve"), default="ends",
                        help="best epoch by validation Dice@1, @5 and box (ends) or @1..5 and box (curve)")
    parser.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                        help="start from LiteMedSAM's own decoder instead of the shipped litemedsam_clicks")
    parser.add_argument("--init", default=None,
                        help="start from this decoder checkpoint instead (e.g. a first phase's best, for a second "
                             "phase at a lower --lr with a fresh optimiser)")
    parser.add_argument("--point-start", type=float, default=0.6)
    parser.add_argument("--click-weight", type=float_in(0), default=0.0,
                        help="weight of the cross-entropy under each click (losses.click_loss): asks the decoder to "
                             "follow every click (0: off)")
    parser.add_argument("--box-keep", type=float_in(0), default=0.0,
                        help="weight of the KL toward the starting decoder's answer to a box alone (0: off): the "
                             "box answers stay while clicks are learned")
    parser.add_argument("--box-keep-every", action="store_true",
                        help="with --box-keep: also keep the answer to a jittered box drawn for every sample of every "
                             "step (one more forward), not only on the steps that start from a box")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lr-step", type=int, default=1000, help="epochs between learning-rate drops")
    parser.add_argument("--lr-gamma", type=float, default=0.5, help="learning-rate factor at each drop")
    parser.add_argument("--shares", type=parse_shares, default=dict(SHARES),
                        help="per-source share of each epoch's draws, e.g. mri=0.45,mri_us=0.2,ct=0.2,echo=0.15 "
                             f"(default {','.join(f'{k}={v:g}' for k, v in SHARES.items())})")
    parser.add_argument("--mix", type=parse_alphas, default=None,
                        help="after training, try weights litemedsam_clicks + alpha * (new - litemedsam_clicks) "
                             "for these alphas (and 1) and keep the one whose worst source gains most on "
                             "validation (choose_mix), e.g. 0.25,0.5,0.75")
    parser.add_argument("--select", choices=("score", "rule"), default="score",
                        help="keep the epoch with the best validation score (score), or snapshot every epoch and "
                             "keep the epoch - and with --mix the alpha - whose validation rows pass the ship rule "
                             "with the most slack (rule; select_by_rule)")
    parser.add_argument("--val-per-source", type=int, default=10, help="validation structure-images per source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-test", type=int, default=None,
                        help="score at most this many held-out structure-images per set (evenly spaced, fixed)")
    parser.add_argument("--eval-only", action="store_true", help="score an existing OUT/decoder.pth")
    parser.add_argument("--baselines-only", action="store_true",
                        help="score only the base and previous models (their rows are kept in OUT/rows/)")
    parser.add_argument("--no-gentle-mask-init", dest="gentle_mask_init", action="store_false",
                        help="keep the mask-prompt path as LiteMedSAM ships it (see gentle_mask_init)")
    parser.add_argument("--local-corrections", action="store_true",
                        help="score the held-out sets (and --select rule's validation) with each correction kept "
                             "local to its click (sonosam.masks.local_correction), as the Slicer effect applies them")
    parser.add_argument("--ship", action="store_true")
    parser.add_argument("--ablation", action="store_true",
                        help="also score the new decoder without mask feedback (twice the scoring time)")
    args = parser.parse_args(argv)
    from .click_data import SOURCES

    if set(args.shares) != set(SOURCES):
        parser.error(f"--shares must name every source once ({', '.join(SOURCES)}), got {', '.join(args.shares)}")

    from ..models import load_model
    from .cache import EmbeddingStore
    from .checkpoint import save_checkpoint
    from .click_data import build_sources
    from .data import summarize
    from .finetune import TrainConfig, _validation_subset, clickable

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = build_sources()
    train, weights, val, val_by_source = [], [], [], {}
    for name, source in sources.items():
        part = source.split.train
        train += part
        weights += [args.shares[name] / len(part)] * len(part)
        val_by_source[name] = _validation_subset(source.split.val, args.val_per_source)   # evenly spaced, fixed
        val += val_by_source[name]
    data = {name: {"description": s.description, "split": s.split.rule, "train": summarize(s.split.train),
                   "val": summarize(s.split.val), "test": summarize(s.split.test)} for name, s in sources.items()}
    for name, d in data.items():
        print(f"{name}: train {d['train']['samples']} samples / {d['train']['images']} images, "
              f"val {d['val']['samples']}/{d['val']['images']}, test {d['test']['samples']}/{d['test']['images']}",
              flush=True)

    old_dir = out / "previous"
    old_dir.mkdir(exist_ok=True)
    shipped = Path(__file__).resolve().parent.parent / "weights"
    for suffix in (".pth", ".json"):   # keep the decoder being replaced, for the comparison
        if not (old_dir / (SHIPPED_NAME + suffix)).exists():
            shutil.copy2(shipped / (SHIPPED_NAME + suffix), old_dir / (SHIPPED_NAME + suffix))
    previous_meta = json.loads((old_dir / (SHIPPED_NAME + ".json")).read_text())
    previous_meta["name"] = SHIPPED_NAME + "_previous"
    (old_dir / (SHIPPED_NAME + ".json")).write_text(json.dumps(previous_meta, indent=2) + "\n")

    began = time.perf_counter()
    if not (args.eval_only or args.baselines_only):
        model = load_model("litemedsam")
        previous = load_model(args.init or str(old_dir / (SHIPPED_NAME + ".pth")))
        state = {k: v.float() for k, v in previous.sam.state_dict().items()
                 if k.startswith(("prompt_encoder.", "mask_decoder."))}
        if args.warm_start:
            model.sam.load_state_dict(state, strict=False)   # warm start: the shipped click decoder
        if args.gentle_mask_init and args.mask_feedback:
            print("mask-prompt path:", gentle_mask_init(model.sam.prompt_encoder), flush=True)
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_step=args.lr_step,
                             lr_gamma=args.lr_gamma,
                             max_corrections=args.max_corrections, mask_feedback=args.mask_feedback,
                             mask_feedback_p=args.mask_feedback_p, point_start=args.point_start,
                             samples_per_epoch=args.samples_per_epoch, val_samples=None, val_clicks=5,
                             seed=args.seed, cache_dir=args.cache, grad_iterations=args.grad_iterations,
                             val_score=args.val_score, click_weight=args.click_weight, box_keep=args.box_keep,
                             box_keep_every=args.box_keep_every)
        snapshots = out / "epochs" if args.select == "rule" else None
        # with snapshots the epochs are judged afterwards, per source, so no pooled validation runs in between
        result = _train(model, train, [] if snapshots else val, config, out, data, weights, args.minutes, snapshots,
                        anchor=previous)
        print(f"trained {result.steps} steps in {time.perf_counter() - began:.0f} s", flush=True)
        if snapshots:
            selecting = time.perf_counter()
            select_by_rule(out, old_dir / (SHIPPED_NAME + ".pth"), val_by_source, args.cache, snapshots,
                           args.mix or [1.0], config.to_dict(), local=args.local_corrections)
            print(f"selected by the rule in {time.perf_counter() - selecting:.0f} s", flush=True)
        elif args.mix:
            mixing = time.perf_counter()
            choose_mix(out, old_dir / (SHIPPED_NAME + ".pth"), val_by_source, args.cache, args.mix,
                       args.val_score)
            print(f"mix chosen in {time.perf_counter() - mixing:.0f} s", flush=True)

    # held-out tables
    base = load_model("litemedsam")
    store = EmbeddingStore(args.cache, base)
    old = clickable(load_model(str(old_dir / (SHIPPED_NAME + ".pth"))), mask=False)
    models = {"litemedsam (base, box)": base, "litemedsam_clicks (previous)": old}
    if not args.baselines_only:
        new = load_model(str(out / "decoder.pth"))
        models[NEW_ROW] = new
        if args.ablation:
            models["new, no mask feedback"] = clickable(new, mask=False)
    rows_by_set, pooled = {}, {}
    (out / "rows").mkdir(exist_ok=True)
    for name, source in sources.items():
        test = _validation_subset(source.split.test, args.max_test)
        rows = {}
        for row, model in models.items():
            saved = rows_file(out, name, row, test, args.local_corrections)
            if row in ("litemedsam (base, box)", "litemedsam_clicks (previous)") and saved.is_file():
                rows[row] = json.loads(saved.read_text())   # fixed models on a fixed test set: computed once
                continue
            rows[row] = heldout_metrics(model, store, test, clicks=row != "litemedsam (base, box)",
                                        local=args.local_corrections)
            saved.write_text(json.dumps(rows[row]) + "\n")
        rows_by_set[name] = rows
        print(f"\n### {name}: {source.description}; {len(test)} of {len(source.split.test)} held-out structure-images "
              f"({len({s.key for s in test})} images); {source.split.rule}\n\n{table(rows)}", flush=True)
    for row in rows_by_set[next(iter(rows_by_set))]:
        pooled[row] = {k: float(np.nanmean([rows_by_set[s][row].get(k, math.nan) for s in rows_by_set]))
                       for k in KEYS}
    print(f"\n### mean over the {len(rows_by_set)} held-out sets\n\n{table(pooled)}", flush=True)
    if args.baselines_only:
        return 0
    passed, reasons = ship_rule(rows_by_set)
    print("ship rule:", "PASSED" if passed else "FAILED", *reasons, sep="\n  ", flush=True)
    report = {"sets": {s: {r: {k: v for k, v in m.items() if k != "curves"} for r, m in rows.items()}
                       for s, rows in rows_by_set.items()},
              "curves": {s: {r: m.get("curves") for r, m in rows.items()} for s, rows in rows_by_set.items()},
              "pooled": pooled, "passed": passed, "reasons": reasons, "data": data,
              "new_row": {"checkpoint": str(out / "decoder.pth"),
                          "prompt_kinds": sorted(str(k) for k in new.spec.prompt_kinds)}}
    (out / "heldout.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    md = "\n\n".join(f"### {s}\n\n{table(rows)}" for s, rows in rows_by_set.items())
    (out / "heldout.md").write_text(md + f"\n\n### mean over the sets\n\n{table(pooled)}\n\nship rule "
                                    f"{'passed' if passed else 'failed'}\n" + "".join(f"- {r}\n" for r in reasons))
    if passed:
        training = json.loads((out / "decoder.json").read_text())["training"]
        training["heldout_test"] = report["sets"]
        training["data"] = data
        pth, meta_path = save_checkpoint(new, out / "ship" / f"{SHIPPED_NAME}.pth", name=SHIPPED_NAME,
                                         weights="decoder", dtype="float16", base_model="litemedsam",
                                         training=training, box_scales=previous_meta.get("box_scales"),
                                         description="LiteMedSAM with a click-trained prompt encoder + mask decoder "
                                                     "(sonosam train, MRI + ultrasound-style MRI + head CT + echo, "
                                                     "iterative clicks" + (" with mask feedback); points, boxes and "
                                                     "masks" if "mask" in new.spec.prompt_kinds else
                                                     ", no mask feedback); points and boxes"))
        print("wrote", pth, meta_path)
        if args.ship:
            for file in (pth, meta_path):
                shutil.copy2(file, shipped / file.name)
            print("shipped into", shipped)
    return 0 if passed else 1


OLD_ROW, NEW_ROW = "litemedsam_clicks (previous)", "new"


def rule_checks(rows_by_set: dict[str, dict[str, dict]], old: str = OLD_ROW, new: str = NEW_ROW,
                margin: float = 0.01) -> list[tuple[float, str]]:
    """Every check of the issue-14 ship rule (module doc) on rows {set: {row: metrics}} (Dice as fractions), as
    (slack, what failing it means): a check passes when its slack is >= 0."""
    sets = list(rows_by_set)
    gain = float(np.mean([rows_by_set[s][new]["dice@5"] - rows_by_set[s][old]["dice@5"] for s in sets]))
    checks = [(gain - margin, f"mean Dice@5 gain {100 * gain:+.1f} points < {100 * margin:.0f}")]
    for s in sets:
        for key in [f"dice@{k}" for k in range(1, 6)] + ["box"]:
            drop = rows_by_set[s][old][key] - rows_by_set[s][new][key]
            checks.append((margin - drop, f"{s} {key}: {100 * drop:.1f} points below {old}"))
    curve = [float(np.mean([rows_by_set[s][new][f"dice@{k}"] for s in sets])) for k in range(1, 6)]
    for k in range(1, 5):
        checks.append((curve[k] - curve[k - 1] + margin,
                       f"mean Dice@{k + 1} {100 * curve[k]:.1f} < Dice@{k} {100 * curve[k - 1]:.1f} - 1"))
    return checks


def ship_rule(rows_by_set: dict[str, dict[str, dict]], old: str = OLD_ROW, new: str = NEW_ROW,
              margin: float = 0.01) -> tuple[bool, list[str]]:
    """The issue-14 ship rule on held-out rows: (passed, one line per check that failed, or one line saying
    all passed)."""
    checks = rule_checks(rows_by_set, old, new, margin)
    failed = [text for slack, text in checks if slack < 0]
    gain = checks[0][0] + margin
    return not failed, failed or [f"all checks passed (mean Dice@5 gain {100 * gain:+.1f} points)"]


def parse_shares(text: str) -> dict[str, float]:
    """``mri=0.45,mri_us=0.2,...`` -> {source: share} (positive numbers; normalised when the draws are made)."""
    shares = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            shares[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--shares item {item!r} is not NAME=NUMBER "
                                             "(e.g. mri=0.45,mri_us=0.2,ct=0.2,echo=0.15)") from None
        if not shares[name.strip()] > 0:
            raise argparse.ArgumentTypeError(f"--shares {name.strip()} must be > 0, got {value}")
    return shares


def parse_alphas(text: str) -> list[float]:
    """``0.25,0.5,0.75`` -> [0.25, 0.5, 0.75, 1.0] (1: the trained decoder itself is always a candidate)."""
    try:
        alphas = sorted({float(a) for a in text.split(",")} | {1.0})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mix wants numbers in [0, 1] separated by commas, got {text!r}") from None
    if not all(0.0 <= a <= 1.0 for a in alphas):
        raise argparse.ArgumentTypeError(f"--mix values must be in [0, 1], got {text!r}")
    return alphas


def mix_toward(new_state: dict, old_state: dict, alpha: float) -> dict:
    """Decoder weights ``old + alpha * (new - old)`` (floating tensors; the rest as in ``new_state``): a
    weight-space interpolation (WiSE-FT) that keeps the fine-tuned decoder near the one it started from."""
    import torch

    out = {}
    for key, value in new_state.items():
        if value.is_floating_point():
            if key not in old_state or old_state[key].shape != value.shape:
                raise ValueError(f"cannot mix {key}: the starting decoder has no tensor of shape {tuple(value.shape)}")
            out[key] = torch.lerp(old_state[key].to(value.dtype), value, alpha)   # exact at alpha 0 and 1
        else:
            out[key] = value
    return out


def choose_mix(out: Path, old_path: Path, val_by_source: dict, cache: str, alphas, mode: str = "curve"):
    """Pull ``out/decoder.pth`` toward the decoder at ``old_path``: for each alpha, score
    ``mix_toward(new, old, alpha)`` on each source's validation part; keep the alpha whose *worst* source
    gains most over the old decoder (the ship rule's binding check, on validation), ties to the smaller alpha.
    The unmixed checkpoint is kept as ``out/decoder_unmixed.pth``; the chosen one replaces ``out/decoder.pth``."""
    from ..models import load_model
    from .cache import EmbeddingStore
    from .checkpoint import read_metadata, save_checkpoint
    from .finetune import clickable, validation_score
    from .validate import evaluate_cached

    prefixes = ("prompt_encoder.", "mask_decoder.")
    new = load_model(str(out / "decoder.pth"))
    old = clickable(load_model(str(old_path)), mask=False)
    new_state = {k: v.detach().clone() for k, v in new.sam.state_dict().items() if k.startswith(prefixes)}
    old_state = {k: v.detach().float() for k, v in old.sam.state_dict().items() if k.startswith(prefixes)}
    store = EmbeddingStore(cache, new)
    sources = [s for s, samples in val_by_source.items() if samples]

    def scores(model) -> dict[str, float]:
        return {s: validation_score(evaluate_cached(model, store, val_by_source[s], n_clicks=5), mode)
                for s in sources}

    reference = scores(old)
    trials = {}
    for alpha in alphas:
        new.sam.load_state_dict(mix_toward(new_state, old_state, alpha), strict=False)
        per_source = scores(new)
        worst = min(per_source[s] - reference[s] for s in sources)
        trials[alpha] = {"per_source": per_source, "worst_gain": worst,
                         "mean": float(np.mean(list(per_source.values())))}
        print(f"mix alpha {alpha:g}: validation " + ", ".join(f"{s} {100 * v:.1f}" for s, v in per_source.items())
              + f"; worst gain over {SHIPPED_NAME} {100 * worst:+.1f} points", flush=True)
    best = max(alphas, key=lambda a: (round(trials[a]["worst_gain"], 6), -a))
    print(f"mix: alpha {best:g} kept ({SHIPPED_NAME} on validation: "
          + ", ".join(f"{s} {100 * v:.1f}" for s, v in reference.items()) + ")", flush=True)
    meta = read_metadata(out / "decoder.pth")
    shutil.copy2(out / "decoder.pth", out / "decoder_unmixed.pth")
    (out / "decoder_unmixed.json").write_text(json.dumps({**meta, "file": "decoder_unmixed.pth"}, indent=2) + "\n")
    new.sam.load_state_dict(mix_toward(new_state, old_state, best), strict=False)
    training = {k: v for k, v in meta["training"].items() if k != "kind"}
    training["mix"] = {"alpha": best, "candidates": {str(a): t for a, t in trials.items()},
                       "previous_on_validation": reference, "rule": "max over alpha of the worst source's gain"}
    save_checkpoint(new, out / "decoder.pth", name=meta["name"], kind=meta["training"].get("kind", "decoder"),
                    weights="full", training=training)
    return best, trials


def select_by_rule(out: Path, old_path: Path, val_by_source: dict, cache: str, snapshots: Path, alphas,
                   config: dict, top: int = 3, local: bool = False):
    """Choose the decoder to keep with the ship rule itself, asked of validation: score every epoch's snapshot
    in ``snapshots`` on each source's validation part, then ``mix_toward`` the decoder at ``old_path`` at each
    alpha < 1 of ``alphas`` for the ``top`` epochs; keep the candidate whose weakest rule check has the most
    slack (each click count and the box of each source is its own check, so a box loss on one source is not
    averaged away); ``local``: clicks scored with local corrections, as the held-out tables then are. Writes
    ``out/decoder.pth`` with every candidate's validation rows in its ``.json``."""
    from ..models import load_model
    from .cache import EmbeddingStore
    from .checkpoint import save_checkpoint
    from .finetune import clickable
    from .validate import evaluate_cached

    paths = sorted(Path(snapshots).glob("epoch_*.pth"))
    if not paths:
        raise FileNotFoundError(f"no epoch snapshots (epoch_NN.pth) in {snapshots}: train with --select rule first")
    old = clickable(load_model(str(old_path)), mask=False)
    store = EmbeddingStore(cache, old)
    sources = [s for s, samples in val_by_source.items() if samples]
    prefixes = ("prompt_encoder.", "mask_decoder.")
    old_state = {k: v.detach().float() for k, v in old.sam.state_dict().items() if k.startswith(prefixes)}

    def rows(model) -> dict[str, dict]:
        return {s: evaluate_cached(model, store, val_by_source[s], n_clicks=5, local=local) for s in sources}

    reference = rows(old)
    trials: dict[str, dict] = {}

    def judge(label: str, model, epoch: int, alpha: float) -> None:
        got = rows(model)
        checks = rule_checks({s: {OLD_ROW: reference[s], NEW_ROW: got[s]} for s in sources})
        slack, binding = min(checks)
        trials[label] = {"epoch": epoch, "alpha": alpha, "slack": slack, "binding": binding,
                         "failed": sum(c < 0 for c, _ in checks), "rows": got}
        print(f"{label}: rule slack {100 * slack:+.1f} points ({trials[label]['failed']} checks failed; weakest: "
              f"{binding}); " + ", ".join(f"{s} Dice@1/@5/box {100 * got[s]['dice@1']:.1f}/"
                                          f"{100 * got[s]['dice@5']:.1f}/{100 * got[s]['box']:.1f}" for s in sources),
              flush=True)

    models = {}
    for path in paths:
        epoch = int(path.stem.split("_")[-1])
        models[epoch] = load_model(str(path))
        judge(f"epoch {epoch}", models[epoch], epoch, 1.0)
    best_epochs = sorted(models, key=lambda e: -trials[f"epoch {e}"]["slack"])[:top]
    for epoch in best_epochs:
        model = models[epoch]
        new_state = {k: v.detach().clone() for k, v in model.sam.state_dict().items() if k.startswith(prefixes)}
        for alpha in [a for a in alphas if a < 1]:
            model.sam.load_state_dict(mix_toward(new_state, old_state, alpha), strict=False)
            judge(f"epoch {epoch} mixed {alpha:g}", model, epoch, alpha)
        model.sam.load_state_dict(new_state, strict=False)
    label = max(trials, key=lambda t: (round(trials[t]["slack"], 6), trials[t]["alpha"]))   # ties: unmixed
    kept = trials[label]
    print(f"kept {label} (rule slack on validation {100 * kept['slack']:+.1f} points); {SHIPPED_NAME} on "
          "validation: " + ", ".join(f"{s} Dice@1/@5/box {100 * r['dice@1']:.1f}/{100 * r['dice@5']:.1f}/"
                                     f"{100 * r['box']:.1f}" for s, r in reference.items()), flush=True)
    model = models[kept["epoch"]]
    if kept["alpha"] < 1:
        state = {k: v.detach().clone() for k, v in model.sam.state_dict().items() if k.startswith(prefixes)}
        model.sam.load_state_dict(mix_toward(state, old_state, kept["alpha"]), strict=False)
    selection = {"kept": label, "rule": "max over candidates of the weakest ship-rule check's slack, on validation",
                 "previous_on_validation": reference, "candidates": trials}
    save_checkpoint(model, out / "decoder.pth", name=SHIPPED_NAME + "_run", kind="decoder", weights="full",
                    training={"config": config, "best_epoch": kept["epoch"], "mix": {"alpha": kept["alpha"]},
                              "selection": selection})
    return label, trials


def gentle_mask_init(prompt_encoder, signal: float = 0.2) -> str:
    """Start the mask-prompt path near "no mask": LiteMedSAM's decoder was trained with boxes only, so it has
    only ever seen the ``no_mask_embed`` dense embedding (rms ~0.03), while any mask prompt through the shipped
    ``mask_downscaling`` adds a dense embedding of rms ~0.13 - larger than the image embedding itself (~0.11),
    whatever the logits' scale (its LayerNorms remove it). Measured: docs/training.md. The last 1x1 conv is
    rescaled by ``signal`` and its bias set to ``no_mask_embed``, so a mask prompt starts as "no mask" plus a
    small signal, and training grows it (same architecture, nothing else changes)."""
    import torch

    last = prompt_encoder.mask_downscaling[-1]
    with torch.no_grad():
        before = float(last.weight.pow(2).mean().sqrt())
        last.weight.mul_(signal)
        last.bias.copy_(prompt_encoder.no_mask_embed.weight[0])
    return f"last conv weights x{signal:g} (rms {before:.4f} -> {before * signal:.4f}), bias = no_mask_embed"


def _train(model, train, val, config, out: Path, data: dict, weights, minutes, snapshots: Path | None = None,
           anchor=None):
    """train_decoder, epoch by epoch (resumable), until ``config.epochs`` or ``minutes`` of wall time;
    ``snapshots``: also keep every epoch's decoder there (``epoch_NN.pth``, a decoder overlay); ``anchor``: the
    starting decoder, for ``config.box_keep``."""
    from .checkpoint import save_checkpoint
    from .finetune import clickable, train_decoder

    began, result = time.perf_counter(), None
    target = config.epochs
    for epoch in range(1, target + 1):
        config.epochs = epoch
        result = train_decoder(model, train, val, config, out / "decoder.pth", name=SHIPPED_NAME + "_run",
                               data_summary=data, resume=True, sample_weights=weights,
                               log=print if epoch == 1 else _quiet_log, anchor=anchor)
        last = result.epochs[-1] if result.epochs else {}
        if last:
            v = last.get("val")
            print(f"epoch {last['epoch']}: loss {last['loss']:.4f}, train Dice {last['dice']:.3f}, "
                  f"{last['seconds']:.0f} s" + (f"; val Dice@1 {v['dice@1']:.3f} @5 {v['dice@5']:.3f} "
                                                f"box {v['box']:.3f}" if v else ""), flush=True)
        if snapshots is not None and last:
            save_checkpoint(clickable(model, mask=config.mask_feedback), snapshots / f"epoch_{last['epoch']:02d}.pth",
                            name=f"{SHIPPED_NAME}_epoch_{last['epoch']}", weights="decoder",
                            training={"epoch": last["epoch"], "steps": result.steps, "config": config.to_dict()})
        if minutes and time.perf_counter() - began > minutes * 60:
            print(f"stopping after {epoch} epochs: the {minutes:g}-minute budget is spent", flush=True)
            break
    return result


def _quiet_log(message: str) -> None:
    if "best checkpoint is chosen anew" in message:
        print(message, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
