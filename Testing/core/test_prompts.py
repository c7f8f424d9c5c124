"""The Prompts value type: validated once at construction, immutable, with errors that name the argument."""

import json

import numpy as np
import pytest

from sonosam.errors import PromptError
from sonosam.prompts import as_prompts
from sonosam.prompts import PromptKind, Prompts


def test_arrays_inside_have_fixed_dtypes_and_shapes():
    p = Prompts(points=[(10, 20), (30.5, 40)], labels=[1, 0], box=(1, 2, 50, 60))
    assert p.points.dtype == np.float64 and p.points.shape == (2, 2)
    assert p.labels.dtype == np.int64 and p.labels.tolist() == [1, 0]
    assert p.box.dtype == np.float64 and p.box.tolist() == [1, 2, 50, 60]
    assert p.mask_logits is None
    assert p.kinds == {PromptKind.POINT, PromptKind.BOX}
    empty = Prompts()
    assert empty.is_empty and empty.points.shape == (0, 2) and empty.labels.shape == (0,) and empty.kinds == set()
    assert Prompts(points=[(1, 2)]).labels.tolist() == [1]            # no labels: all foreground
    assert Prompts(points=(3, 4)).points.tolist() == [[3, 4]]          # one point without the outer list
    logits = Prompts(mask_logits=np.zeros((1, 256, 256))).mask_logits  # a prediction's (1, 256, 256) slice
    assert logits.shape == (256, 256) and logits.dtype == np.float32


def test_prompt_kinds_compare_with_the_old_strings():
    assert PromptKind.BOX == "box" and str(PromptKind.MASK) == "mask"
    assert frozenset({PromptKind.POINT, PromptKind.BOX}) == frozenset({"point", "box"})
    assert "box" in frozenset({PromptKind.BOX}) and PromptKind.BOX in frozenset({"box"})
    assert json.dumps(sorted(frozenset(PromptKind))) == '["box", "mask", "point"]'


def test_a_value_never_changes_in_place():
    p = Prompts(points=[(10, 20)], labels=[1])
    q = p.add_click(30, 40, positive=False)
    assert p.n_clicks == 1 and q.n_clicks == 2 and q.labels.tolist() == [1, 0]
    with pytest.raises(ValueError):
        p.points[0, 0] = 5                     # read-only arrays
    with pytest.raises(AttributeError):
        p.box = (0, 0, 1, 1)                   # frozen
    source = np.array([[1.0, 2.0]])
    r = Prompts(points=source)
    source[0, 0] = 99                          # the caller's array is copied, not kept
    assert r.points[0, 0] == 1.0
    m = q.with_mask(np.ones((256, 256)))
    assert m.kinds == {"point", "mask"} and q.mask_logits is None
    assert m.with_mask(None).mask_logits is None and m.with_mask(None) == q
    assert p == Prompts(points=[[10.0, 20.0]], labels=np.array([1])) and p != q


@pytest.mark.parametrize("kwargs, argument, words", [
    (dict(points=[(1, 2, 3)]), "points", "(N, 2)"),
    (dict(points=[("a", "b")]), "points", "not numbers"),
    (dict(points=[(np.nan, 2)]), "points", "finite"),
    (dict(points=[(1, 2)], labels=[2]), "labels", "1 (foreground) or 0"),
    (dict(points=[(1, 2)], labels=[1, 0]), "labels", "one label per point"),
    (dict(labels=[1]), "labels", "one label per point"),
    (dict(box=(1, 2, 3)), "box", "four numbers"),
    (dict(box=(0, 0, np.inf, 5)), "box", "finite"),
    (dict(box=(10, 0, 5, 5)), "box", "x0 < x1"),
    (dict(box=(0, 5, 5, 5)), "box", "y0 < y1"),
    (dict(mask_logits=np.zeros((64, 64))), "mask_logits", "(256, 256)"),
    (dict(mask_logits=np.full((256, 256), np.nan)), "mask_logits", "NaN"),
])
def test_bad_prompts_name_the_argument(kwargs, argument, words):
    with pytest.raises(PromptError) as error:
        Prompts(**kwargs)
    assert str(error.value).startswith(f"{argument}:") and words in str(error.value)


def test_check_inside_names_the_prompt_outside_the_image():
    Prompts(points=[(0, 0), (639, 479)], box=(0, 0, 639, 479)).check_inside(640, 480)
    with pytest.raises(PromptError, match=r"Point \(700, 10\) lies outside the 640x480 image"):
        Prompts(points=[(5, 5), (700, 10)]).check_inside(640, 480)
    with pytest.raises(PromptError, match=r"Box corner \(600, 500\) lies outside"):
        Prompts(box=(10, 10, 600, 500)).check_inside(640, 480)


def test_json_round_trip_leaves_the_mask_to_travel_as_bytes():
    logits = np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32)
    p = Prompts(points=[(10, 20)], labels=[0], box=(1, 2, 30, 40), mask_logits=logits)
    wire = json.loads(json.dumps(p.to_json()))
    assert wire == {"points": [[10.0, 20.0]], "labels": [0], "box": [1.0, 2.0, 30.0, 40.0]}
    back = Prompts.from_json(wire, mask_logits=np.frombuffer(logits.tobytes(), np.float32).reshape(256, 256))
    assert back == p
    assert Prompts.from_json({"box": [1, 2, 3, 4]}).kinds == {"box"}
    with pytest.raises(PromptError, match="box:"):
        Prompts.from_json({"box": [3, 2, 1, 4]})          # validated like the constructor
    with pytest.raises(PromptError, match="unknown field"):
        Prompts.from_json({"pints": [[1, 2]]})


def test_keyword_conveniences_build_the_same_prompts():
    p = Prompts(points=[(1, 2)], labels=[1], box=(0, 0, 5, 5))
    assert as_prompts(points=[(1, 2)], labels=[1], box=(0, 0, 5, 5)) == p
    assert as_prompts(p) is p
    with pytest.raises(PromptError, match="not both"):
        as_prompts(p, box=(0, 0, 5, 5))
    with pytest.raises(TypeError, match="Prompts"):
        as_prompts({"box": (0, 0, 5, 5)})
