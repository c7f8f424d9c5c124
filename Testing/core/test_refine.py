"""The zero-shot refiner on the real Colin27 MRI (AAL label degraded into a coarse map) with the real
click-trained LiteMedSAM decoder: points where they belong, deterministic, and a better mask than the map."""

import numpy as np
import pytest

from sonosam.errors import PromptError
from sonosam.evaluate.metrics import dice
from sonosam.refine import coarse_from_mask, default_context, positive_points, refine

CAUDATE_R = 72


@pytest.fixture(scope="module")
def clicks_model():
    from sonosam.models import load_model

    return load_model("litemedsam_clicks", device="cpu")


@pytest.fixture(scope="module")
def caudate(clicks_model):
    from sonosam.seeds_data import colin27, degrade, largest_slice

    volume, labels, window, _ = colin27()
    index = largest_slice(labels, CAUDATE_R)
    image, gt = volume[index], labels[index] == CAUDATE_R
    return image, gt, degrade(gt, seed=3), labels[index] > 0, clicks_model.encode(image, window)


@pytest.mark.slow
def test_refined_mask_beats_the_coarse_map(clicks_model, caudate):
    image, gt, coarse, brain, embedding = caudate
    result = refine(clicks_model, image, coarse, steps=30, embedding=embedding, seed=0)
    print(f"Caudate_R: coarse Dice {dice(coarse > 0.5, gt):.3f}, refined {dice(result.mask, gt):.3f}, k={result.k}, "
          f"{len(result.losses)} steps")
    assert 4 <= result.k <= 6 and len(result.positives) == result.k
    for x, y in result.positives:   # medoids are pixels of the double-thresholded region
        assert result.region[int(y), int(x)]
    assert result.region.sum() < (coarse > 0.15).sum()   # the second threshold (0.4 x max) is applied
    context = default_context(coarse > 0.15) & ~(coarse > 0.15)
    for x, y in result.negatives:   # after optimisation, inside the complementary problem's mask
        assert context[int(round(y)), int(round(x))]
    assert result.losses[-1] <= result.losses[0]
    assert dice(result.mask, gt) > dice(coarse > 0.5, gt) + 0.05


@pytest.mark.slow
def test_given_context_holds_the_negatives_and_seed_repeats(clicks_model, caudate):
    image, gt, coarse, brain, embedding = caudate
    first = refine(clicks_model, image, coarse, context=brain, steps=4, embedding=embedding, seed=7)
    again = refine(clicks_model, image, coarse, context=brain, steps=4, embedding=embedding, seed=7)
    np.testing.assert_array_equal(first.positives, again.positives)
    np.testing.assert_array_equal(first.negatives, again.negatives)
    np.testing.assert_array_equal(first.mask, again.mask)
    for x, y in first.negatives:
        assert brain[int(round(y)), int(round(x))] and not coarse[int(round(y)), int(round(x))] > 0.15


def test_positive_points_alone_and_bad_maps():
    mask = np.zeros((80, 100), bool)
    mask[20:60, 30:70] = True
    prob = coarse_from_mask(mask)
    a, k, inertia, region = positive_points(prob, seed=1)
    b, *_ = positive_points(prob, seed=1)
    np.testing.assert_array_equal(a, b)
    assert set(inertia) == {4, 5, 6} and inertia[4] >= inertia[5] >= inertia[6]
    with pytest.raises(PromptError, match="above 0.15"):
        positive_points(np.zeros((10, 10)))
    with pytest.raises(PromptError, match="0..1"):
        positive_points(mask.astype(np.uint8) * 255)


def test_box_only_model_is_refused(default_model):
    image = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)
    prob = np.zeros((64, 64), np.float32)
    prob[20:40, 20:40] = 1
    with pytest.raises(PromptError, match="click-capable"):
        refine(default_model, image, prob, embedding=default_model.encode(image))


@pytest.mark.slow
def test_refine_command_writes_mask_and_overlay(caudate, tmp_path, capsys):
    from PIL import Image

    from sonosam.cli import main

    image, gt, coarse, brain, _ = caudate
    Image.fromarray(image).save(tmp_path / "slice.png")
    Image.fromarray(np.round(coarse * 255).astype(np.uint8)).save(tmp_path / "coarse.png")   # 0..255 picture
    out = tmp_path / "refined.png"
    args = ["--backend", "eager", "refine", str(tmp_path / "slice.png"), "--coarse", str(tmp_path / "coarse.png"),
            "--steps", "3", "-o", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "positives (k=" in printed and "negatives" in printed
    mask = np.asarray(Image.open(out)) > 0
    assert mask.shape == gt.shape and dice(mask, gt) > 0.3
    assert (tmp_path / "refined_overlay.png").is_file()
    assert main(args) == 2   # never overwrites without --overwrite
    assert "exists" in capsys.readouterr().err


def test_a_coarse_mask_over_the_whole_image_names_the_mask_not_a_context(clicks_model):
    image = np.random.default_rng(1).integers(0, 255, (64, 64)).astype(np.uint8)
    with pytest.raises(PromptError, match="leaves no background"):
        refine(clicks_model, image, np.ones((64, 64), np.float32), embedding=clicks_model.encode(image), steps=2)
