"""Stop rules judged on many structures at once, offline (docs/volume.md, "stop rules fitted on 38 AAL structures").

    python -m scripts.stop_rules collect runs/stops/signals.json [--labels 1 2 3 ...] [--thick MM]   # Colin27 AAL
    python -m scripts.stop_rules replay runs/stops/signals.json [--cv]                  # default rules, best cut, fit

`collect` propagates each structure from the bench's box (axial, `litemedsam_clicks` with its carrier) with every
weak rule off and records, per judged slice, the arguments `sonosam.volume.stop_reason` was called with, and per
slice the mask's overlap with the label. Weak rules only end fronts (a front goes on from a weak slice with the same
mask), so any weak rule replays exactly from that record: `replay` reports the default rules' mean 3D Dice, the best
cut's (where stopping alone could take it), and fits the thresholds by coordinate descent over `GRID` (ties keep the
default); `--cv` fits on half the structures (mirror pairs kept together) and scores the other half.
"""

from __future__ import annotations

import argparse
import inspect
import json
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

import sonosam.volume as volume_module
from sonosam.volume import PropagationOptions, Seed, propagate, slice_of, stop_reason

# every weak rule off; the similarity is still computed (-2 never fires) so that it is recorded
WEAK_OFF = dict(min_score=0.0, min_score_anchor=None, min_area_ratio=0.0, max_intensity_shift=None,
                min_similarity=-2.0, max_trend_growth=None, max_extent_ratio=None, flag_fill=False)
SIGNALS = [name for name in inspect.signature(stop_reason).parameters if name != "opt"]
BENCH_LABELS = {29, 30, 37, 38, 41, 42, 71, 72, 73, 74, 75, 76, 77, 78}   # bench rows and their mirrors
GRID = dict(min_similarity=[None, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95], patience=[1, 2, 3, 4, 5, 6],
            max_intensity_shift=[None, 1.0, 1.5, 2.0, 2.5, 3.0], min_score_anchor=[None, 0.6, 0.7, 0.8, 0.9, 1.0],
            min_score=[0.0, 0.3, 0.4, 0.5, 0.6], max_trend_growth=[None, 1.2, 1.3, 1.5],
            max_extent_ratio=[None, 1.2, 1.5, 2.0], min_area_ratio=[0.0, 0.05, 0.1, 0.2], flag_fill=[False, True])


@contextmanager
def recording():
    """Yield a list that fills with {t, stop_reason's arguments} for every slice a front judges. A research hook:
    it wraps the module's functions for the duration, so keep it out of the product."""
    calls, current = [], {}
    original_stop, original_predict = volume_module.stop_reason, volume_module._Run.predict

    def stop(opt, **signals):
        calls.append(dict(t=current["t"], **{k: None if v is None else float(v) for k, v in signals.items()}))
        return original_stop(opt, **signals)

    def predict(self, index, prompts, model=None):
        current["t"] = index
        return original_predict(self, index, prompts, model)

    volume_module.stop_reason, volume_module._Run.predict = stop, predict
    try:
        yield calls
    finally:
        volume_module.stop_reason, volume_module._Run.predict = original_stop, original_predict


def collect_one(predictor, volume: np.ndarray, reference: np.ndarray, seed: int, box, reach: int | None = None,
                **options) -> dict:
    """One structure: its free run's judged signals and per-slice overlap (axis 0)."""
    with recording() as calls:
        result = propagate(predictor, volume, [Seed(seed, box=box)], axis=0, max_slices=reach,
                           **{**options, **WEAK_OFF})
    per_slice = {int(k): [int((result.mask[k] & reference[k]).sum()), int(result.mask[k].sum())]
                 for k in range(volume.shape[0]) if result.mask[k].any() or reference[k].any()}
    return dict(seed=seed, true_voxels=int(reference.sum()), per_slice=per_slice, judged=list(calls))


def _cut(front: list[dict], opt: PropagationOptions) -> int | None:
    """The first slice of `front` (ordered outward) that `opt`'s rules leave out; None: it keeps them all.
    Mirrors the stop logic of sonosam.volume's `_Run.front` (a break ends it there, `patience` weak slices in a row end
    it at the first); Testing/core/test_stop_rules.py fails if the two drift apart."""
    weak: list[int] = []
    for call in front:
        signals = {k: call[k] for k in SIGNALS}
        signals["fills_box"] = bool(signals["fills_box"])
        signals["anchor_score"] = float("nan") if signals["anchor_score"] is None else signals["anchor_score"]
        reason, at_once = stop_reason(opt, **signals)
        if reason and (at_once or len(weak) + 1 >= max(opt.patience, 1)):
            return weak[0] if weak else call["t"]
        weak = weak + [call["t"]] if reason else []
    return None


def replay_dice(row: dict, opt: PropagationOptions) -> float:
    """The 3D Dice the structure would have had under `opt`'s weak rules."""
    seed = row["seed"]
    low = _cut(sorted((c for c in row["judged"] if c["t"] < seed), key=lambda c: -c["t"]), opt)
    high = _cut(sorted((c for c in row["judged"] if c["t"] > seed), key=lambda c: c["t"]), opt)
    kept = [v for k, v in row["per_slice"].items()
            if (low is None or int(k) > low) and (high is None or int(k) < high)]
    return 2 * sum(a for a, _ in kept) / (sum(b for _, b in kept) + row["true_voxels"])


def best_cut_dice(row: dict) -> float:
    """The highest 3D Dice any pair of stops around the seed gives (what stopping alone could reach)."""
    items = sorted((int(k), v) for k, v in row["per_slice"].items())   # keys are strings after JSON
    ks = [k for k, _ in items]
    inter, pred = np.array([v[0] for _, v in items]), np.array([v[1] for _, v in items])
    ci, cp = np.concatenate([[0], np.cumsum(inter)]), np.concatenate([[0], np.cumsum(pred)])
    lows = [n for n, k in enumerate(ks) if k <= row["seed"]]
    highs = [n for n, k in enumerate(ks) if k >= row["seed"]]
    return max(2 * (ci[b + 1] - ci[a]) / (cp[b + 1] - cp[a] + row["true_voxels"]) for a in lows for b in highs)


def mean_dice(rows: list[dict], opt: PropagationOptions) -> float:
    return float(np.mean([replay_dice(r, opt) for r in rows]))


def fit(rows: list[dict], opt: PropagationOptions | None = None, rounds: int = 2) -> PropagationOptions:
    """Coordinate descent over GRID; a value replaces the current one only if it scores better by > 0.0005."""
    opt = opt or PropagationOptions()
    for _ in range(rounds):
        for name, values in GRID.items():
            score, value = max(((mean_dice(rows, replace(opt, **{name: v})), v) for v in values),
                               key=lambda x: x[0])
            if score > mean_dice(rows, opt) + 0.0005:
                opt = replace(opt, **{name: value})
    return opt


def _describe(opt: PropagationOptions) -> str:
    default = PropagationOptions()
    changed = [f"{n}={getattr(opt, n)}" for n in GRID if getattr(opt, n) != getattr(default, n)]
    return ", ".join(changed) or "the defaults"


def colin27_aal(labels: list[int] | None, cache: str = "runs/cache", thick: float | None = None):
    """The Colin27 T1, its AAL atlas, the labels (default: every non-bench label) and a `litemedsam_clicks`
    predictor holding every axial slice's embedding: (predictor, volume, atlas, labels, window, volume_id).
    `thick`: the T1 as slices about that many mm thick (`bench.volume.thicken`); the atlas stays as it is (1 mm),
    and `collect` thickens each label the same way."""
    from bench.volume import slices_per_group, thicken, warm_from_store
    from sonosam.data import mri_colin27_paths
    from sonosam.io import read_volume
    from sonosam.models import load_model
    from sonosam.predictor import Predictor
    from sonosam.train.cache import EmbeddingStore
    from sonosam.volume import volume_window

    t1_path, aal_path = mri_colin27_paths()
    t1, atlas = read_volume(t1_path), read_volume(aal_path).array
    volume, spacing = t1.array, t1.geometry.spacing[2]
    labels = labels or [int(v) for v in np.unique(atlas) if v and int(v) not in BENCH_LABELS]
    model = load_model("litemedsam_clicks")
    group = slices_per_group(spacing, thick) if thick else 1
    if group > 1:
        volume = thicken(volume, group)
    window = volume_window(volume)
    volume_id = f"colin27-{window}" + (f"-thick{group}x0" if group > 1 else "")
    predictor = Predictor(model, cache_mib=4096)
    warm_from_store(predictor, EmbeddingStore(cache, model, memory=False), volume, 0, window, volume_id,
                    range(volume.shape[0]))
    return predictor, volume, atlas, labels, window, volume_id


def collect(out: str, labels: list[int] | None, thick: float | None = None) -> None:
    from bench.volume import loose_box, thicken, true_extent

    predictor, volume, atlas, labels, window, volume_id = colin27_aal(labels, thick=thick)
    group = atlas.shape[0] // volume.shape[0]   # the T1's slices per thick slice (1: as it is)
    rows = []
    for value in labels:
        reference = atlas == value if group == 1 else thicken(atlas == value, group) >= 0.5
        if not reference.any():
            continue
        first, last = true_extent(reference, 0)
        seed = int(np.argmax(reference.sum(axis=(1, 2))))
        row = collect_one(predictor, volume, reference, seed, loose_box(slice_of(reference, 0, seed)),
                          reach=max(seed - first, last - seed) + 20, window=window, volume_id=volume_id,
                          carrier="litemedsam_slices")
        rows.append(dict(label=value, true=(first, last), **row))
        print(f"label {value}: slices {first}..{last}, default rules {replay_dice(row, PropagationOptions()):.3f}, "
              f"best cut {best_cut_dice(row):.3f}", flush=True)
        with open(out, "w") as f:   # after every structure: a long run can be stopped and still used
            json.dump(rows, f)
    predictor.close()


def replay(paths: list[str], cv: bool) -> None:
    rows = []
    for path in paths:
        try:
            with open(path) as f:
                rows += json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"{path}: not a readable signals file ({error}); make one with "
                             f"`python -m scripts.stop_rules collect {path}`.") from None
    default = PropagationOptions()
    print(f"{len(rows)} structures: default rules {mean_dice(rows, default):.4f}, best cut "
          f"{np.mean([best_cut_dice(r) for r in rows]):.4f}")
    if cv:
        fold = lambda row: ((row["label"] - 1) // 2) % 2   # AAL numbers mirror pairs 2n-1, 2n: kept together
        for held in (0, 1):
            train = [r for r in rows if fold(r) != held]
            test = [r for r in rows if fold(r) == held]
            opt = fit(train)
            print(f"fit on {len(train)} ({_describe(opt)}): held-back {len(test)} {mean_dice(test, default):.4f} -> "
                  f"{mean_dice(test, opt):.4f}")
    else:
        opt = fit(rows)
        print(f"fitted ({_describe(opt)}): {mean_dice(rows, opt):.4f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("out")
    c.add_argument("--labels", type=int, nargs="*")
    c.add_argument("--thick", type=float, metavar="MM", help="the T1 and labels as slices about MM thick")
    r = sub.add_parser("replay")
    r.add_argument("signals", nargs="+")
    r.add_argument("--cv", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "collect":
        collect(args.out, args.labels, args.thick)
    else:
        replay(args.signals, args.cv)


if __name__ == "__main__":
    main()
