"""A wider check for propagation changes: the Colin27 AAL labels that are no bench row nor a bench row's mirror.

    python -m scripts.aal_check --option keep_pieces=0.5 [--labels 54 91 ...] [--json runs/aal.json]

Each label is propagated from the bench's box on its widest axial slice (`litemedsam_clicks` with its carrier, the
seed check on), once with the default options and once with the `--option`s given (as `bench.volume`'s), and the 3D
Dice of both is printed per label with the mean difference and its bootstrap 95 % interval over labels. The bench's
18 held-out rows hold no parcel of a larger tissue (cortical gyri, cerebellar lobules), so a seed or front rule that
passes them can still fail these (docs/volume.md, "withdrawn afterwards"); these labels are in the click decoder's
and the carrier's training, so they inform and tune, they do not hold out.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from bench.volume import loose_box, parse_options
from scripts.stop_rules import colin27_aal


def main(argv=None) -> int:
    from sonosam.evaluate.metrics import dice
    from sonosam.volume import Seed, propagate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--labels", type=int, nargs="*", help="AAL label values (default: every non-bench label)")
    parser.add_argument("--cache", default="runs/cache", help="folder of the on-disk embedding cache")
    parser.add_argument("--json", help="write the per-label figures here")
    args = parser.parse_args(argv)
    options = parse_options(args.option)

    predictor, volume, atlas, labels, window, volume_id = colin27_aal(args.labels, args.cache)
    rows = []
    for value in labels:
        reference = atlas == value
        index = int(np.argmax(reference.sum(axis=(1, 2))))
        seed = Seed(index, box=loose_box(reference[index]))
        before, after = (dice(propagate(predictor, volume, [seed], axis=0, window=window, volume_id=volume_id,
                                        **given).mask, reference) for given in ({}, options))
        rows.append({"label": value, "before": before, "after": after})
        print(f"AAL {value}: {before:.3f} -> {after:.3f}", flush=True)
    predictor.close()
    change = np.array([r["after"] - r["before"] for r in rows])
    means = np.random.default_rng(0).choice(change, (2000, len(change))).mean(axis=1)
    print(f"{len(rows)} labels: mean {np.mean([r['before'] for r in rows]):.3f} -> "
          f"{np.mean([r['after'] for r in rows]):.3f} ({change.mean():+.3f}, 95 % [{np.percentile(means, 2.5):+.3f}, "
          f"{np.percentile(means, 97.5):+.3f}]); {int((change > 0.01).sum())} up, {int((change < -0.01).sum())} down "
          "by more than 0.01")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"options": options, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
