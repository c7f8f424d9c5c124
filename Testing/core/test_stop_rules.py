"""scripts.stop_rules: a run with every weak rule off, replayed offline under any weak rule, gives exactly the 3D
Dice that propagating under that rule gives (synthetic barrel, the engine tests' stand-in model)."""

from dataclasses import replace

from sonosam.evaluate.metrics import dice
from sonosam.predictor import Predictor
from sonosam.volume import PropagationOptions, Seed, propagate

from scripts.stop_rules import best_cut_dice, collect_one, fit, replay_dice
from test_volume_engine import ThresholdModel, sphere_volume


def test_replay_matches_propagation_under_each_rule():
    volume, ball = sphere_volume(neighbour=True)
    volume[24][ball[24]] += 60        # one weak slice inside the barrel (intensity far from the anchor's)
    box = (20, 20, 44, 44)
    rules = dict(min_consistent=0.0, max_growth=1e9, min_overlap=0.0)   # breaks off: the weak rules decide
    row = collect_one(Predictor(ThresholdModel()), volume, ball, 20, box, **rules)
    assert {call["t"] for call in row["judged"]} >= set(range(12, 29)) - {20}
    default = PropagationOptions(**rules)
    for opt in (default, replace(default, patience=1), replace(default, max_intensity_shift=None, patience=2),
                replace(default, min_similarity=0.99, patience=1)):
        run = propagate(Predictor(ThresholdModel()), volume, [Seed(20, box=box)], **vars(opt))
        assert abs(replay_dice(row, opt) - dice(run.mask, ball)) < 1e-9, opt
    assert replay_dice(row, replace(default, patience=1)) < replay_dice(row, default)   # it stops at slice 24
    assert best_cut_dice(row) >= replay_dice(row, default)
    fitted = fit([row], default, rounds=1)
    assert replay_dice(row, fitted) >= replay_dice(row, default)


def test_replay_names_a_file_it_cannot_read(tmp_path):
    import pytest

    from scripts.stop_rules import replay

    bad = tmp_path / "signals.json"
    bad.write_text("{")
    with pytest.raises(SystemExit, match="not a readable signals file.*collect"):
        replay([str(bad)], cv=False)
