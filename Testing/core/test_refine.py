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


def test_coarse_maps_from_files_and_the_wire_follow_one_scale_rule():
    """coarse_probabilities (the command line's and the server's rule): only an integer map is a 0..255 picture; a
    float map that overshoots 1 a little (interpolation) is clipped, one clearly above 1 is refused naming the fix."""
    from sonosam.refine import coarse_probabilities

    picture = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_allclose(coarse_probabilities(picture), [[0, 128 / 255, 1]])
    np.testing.assert_array_equal(coarse_probabilities(np.array([[0, 1]], np.uint8)), [[0, 1]])   # a 0/1 mask
    overshoot = np.array([[0.0, 0.5, 1.02]], np.float32)
    np.testing.assert_allclose(coarse_probabilities(overshoot), [[0, 0.5, 1]])   # was divided by 255
    with pytest.raises(PromptError, match="divide it by its scale"):
        coarse_probabilities(np.array([[0.0, 50.0, 100.0]], np.float32))   # percent: was silently /255
    with pytest.raises(PromptError, match="0..255"):
        coarse_probabilities(np.array([[0, 1000]], np.uint16))


def test_a_progress_hook_sees_each_step_and_stops_the_refinement(clicks_model):
    """The hook a server job passes (its progress raises when the job is cancelled): called before each of the
    negatives' optimisation steps, and an exception it raises ends the refinement there."""
    image = np.random.default_rng(2).integers(0, 255, (64, 64)).astype(np.uint8)
    prob = np.zeros((64, 64), np.float32)
    prob[20:40, 20:40] = 1
    seen = []

    class Stop(Exception):
        pass

    def progress(step, steps):
        seen.append((step, steps))
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        refine(clicks_model, image, prob, embedding=clicks_model.encode(image), steps=50, progress=progress)
    assert seen == [(0, 50), (1, 50), (2, 50)]


def test_refine_command_reads_a_volume_map_where_it_lies_in_space(tmp_path):
    """`sonosam refine --coarse` on a volume: a map stored flipped along j (with the geometry that keeps each voxel
    in place) gives the mask of the same map unflipped (it was used voxel by voxel: the mirror image's mask)."""
    from sonosam.cli import main
    from sonosam.io import Geometry, Volume, read_segmentation, write_volume
    from sonosam.seeds_data import colin27, degrade, largest_slice

    volume, labels, window, _ = colin27()
    index = largest_slice(labels, CAUDATE_R)
    block = slice(index - 1, index + 2)
    t1 = np.ascontiguousarray(volume[block])
    coarse = np.stack([degrade(s == CAUDATE_R, seed=3) for s in labels[block]]).astype(np.float32)
    geometry = Geometry(spacing=(1.0, 1.0, 1.0))
    write_volume(Volume(t1, geometry), tmp_path / "t1.nrrd")
    direction = np.eye(3)
    direction[:, 1] *= -1   # j runs the other way; the origin moves to the old last row
    origin = np.asarray(geometry.origin, float) + np.eye(3)[:, 1] * (t1.shape[1] - 1)
    flipped = Geometry(spacing=(1.0, 1.0, 1.0), origin=tuple(origin), direction=direction)
    write_volume(Volume(np.ascontiguousarray(coarse[:, ::-1, :]), flipped), tmp_path / "coarse_flipped.nrrd")
    write_volume(Volume(coarse, geometry), tmp_path / "coarse.nrrd")
    masks = {}
    for name in ("coarse", "coarse_flipped"):
        out = tmp_path / f"{name}_refined.nii.gz"
        assert main(["--backend", "eager", "refine", str(tmp_path / "t1.nrrd"), "--coarse", str(tmp_path / f"{name}.nrrd"),
                     "--slice", "1", "--steps", "3", "-o", str(out)]) == 0
        masks[name] = read_segmentation(out).labelmap.reshape(t1.shape)[1] > 0
    np.testing.assert_array_equal(masks["coarse_flipped"], masks["coarse"])
    assert dice(masks["coarse"], labels[index] == CAUDATE_R) > 0.3
