"""A prompt answered on a zoomed crop around its box (sonosam.zoom)."""

from pathlib import Path

import numpy as np

from sonosam.models import mask_to_logits
from sonosam.prompts import Prompts
from sonosam.zoom import crop_prompts, decode_zoomed, logits_to_pixels, zoom_crop


def disc_image(seed: int, shape, centre, radius):
    """A noisy slice with one brighter disc: (image, the disc's mask)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(60, 4, shape).astype(np.float32)
    yy, xx = np.indices(shape)
    disc = np.hypot(yy - centre[0], xx - centre[1]) <= radius
    image[disc] += 40
    return image, disc


def crop_encoder(model, image):
    """`decode_zoomed`'s ``embed``: a crop's embedding, or the whole image's for None."""
    return lambda crop: model.encode(image if crop is None else image[crop[1]:crop[3], crop[0]:crop[2]])


def test_the_crop_is_centred_on_the_box_at_least_min_side_and_inside_the_image():
    # a 20 px box (pixels 40..59, 50..69): x1.5 -> 30 px, 5 px either side; never under min_side
    assert zoom_crop((40, 50, 59, 69), (200, 300), 1.5, 16) == (35, 45, 65, 75)
    assert zoom_crop((40, 50, 59, 69), (200, 300), 1.5, 40) == (30, 40, 70, 80)
    assert zoom_crop((0, 0, 19, 19), (200, 300), 2.0, 16) == (0, 0, 40, 40)  # moved inside at the corner
    assert zoom_crop((297, 198, 299, 199), (200, 300), 1.5, 32) == (268, 168, 300, 200)  # a tiny box at the edge
    assert zoom_crop((100, 10, 179, 30), (200, 300), 3.0, 16) == (20, 0, 260, 200)  # taller than the image: cut
    assert zoom_crop((10, 10, 280, 190), (200, 300), 1.5, 16) is None  # the whole image: nothing to zoom


def test_prompts_move_into_the_crop_and_the_mask_prompt_keeps_its_shape():
    shape = (120, 200)
    mask = np.zeros(shape, bool)
    mask[40:70, 90:130] = True
    prompts = Prompts([[100, 50], [300, 500]], [1, 0], (88, 38, 131, 71), mask_to_logits(mask))
    crop = (70, 20, 150, 90)
    moved = crop_prompts(prompts, crop, shape)
    assert np.allclose(moved.box, (18, 18, 61, 51))
    assert np.allclose(moved.points, [[30, 30], [79, 69]])  # a point outside the crop lands on its edge
    assert moved.labels.tolist() == [1, 0]
    inside = logits_to_pixels(moved.mask_logits, (70, 80)) > 0
    assert (inside == mask[20:90, 70:150]).mean() > 0.97


def test_a_small_structure_is_answered_in_the_image_frame(default_model):
    # a 14 px dim disc on a 240 x 320 slice: the zoomed answer comes back at the slice's size, nothing outside the
    # crop, with logits that agree with the masks
    image, disc = disc_image(3, (240, 320), (150, 200), 7)
    prompts = Prompts(box=(190, 140, 210, 160))
    embed = crop_encoder(default_model, image)
    pred = decode_zoomed(default_model, image.shape, prompts, embed, context=1.5, min_side=32)
    crop = zoom_crop(prompts.box, image.shape, 1.5, 32)
    assert pred.masks.shape[1:] == image.shape and pred.low_res_logits.shape[1:] == (256, 256)
    outside = np.ones(image.shape, bool)
    outside[crop[1]:crop[3], crop[0]:crop[2]] = False
    assert not pred.mask[outside].any()
    dice = 2 * (pred.mask & disc).sum() / (pred.mask.sum() + disc.sum())
    assert dice > 0.8, dice
    assert ((logits_to_pixels(pred.logits, image.shape) > 0) == pred.mask).mean() > 0.99


def test_a_zoomed_predictor_zooms_on_boxes_keeps_clicks_inside_and_answers_clicks_alone_on_the_whole_image(
        default_model):
    from sonosam.predictor import Predictor
    from sonosam.zoom import ZoomedPredictor, prompt_extent

    image = disc_image(5, (200, 260), (100, 130), 9)[0]
    zoomed, plain = ZoomedPredictor(Predictor(default_model), 1.5, 32), Predictor(default_model)
    clicks = Prompts([[121, 91], [139, 109]], [1, 1])  # no box (litemedsam reads the clicks' extremes as one)
    assert np.array_equal(zoomed.predict(image, clicks, key="a").mask, plain.predict(image, clicks, key="a").mask)
    # a click outside the box widens the crop so that it stays inside
    prompts = Prompts([[160, 100]], [0], (118, 88, 142, 112))
    assert prompt_extent(prompts) == (118, 88, 160, 112)
    left, top, right, bottom = zoom_crop(prompt_extent(prompts), image.shape, 1.5, 32)
    assert left <= 118 and right > 160 and top <= 88 and bottom > 112
    answer = zoomed.predict(image, prompts, key="a")
    outside = np.ones(image.shape, bool)
    outside[top:bottom, left:right] = False
    assert answer.masks.shape[1:] == image.shape and answer.mask.any() and not answer.mask[outside].any()


def test_a_zoomed_predictor_refuses_a_crop_that_would_cut_the_box(default_model):
    import pytest

    from sonosam.errors import SonoSAMError
    from sonosam.predictor import Predictor
    from sonosam.zoom import ZoomedPredictor

    for context in (0.5, float("nan")):
        with pytest.raises(SonoSAMError, match="numbers >= 1"):
            ZoomedPredictor(Predictor(default_model), context)
    with pytest.raises(SonoSAMError, match="at least 8 px"):
        ZoomedPredictor(Predictor(default_model), 3, min_side=2)


def test_several_scales_average_their_logits_and_reuse_the_crops_from_the_predictors_cache(default_model):
    from sonosam.predictor import Predictor
    from sonosam.zoom import ZoomedPredictor, decode_multiscale

    image, disc = disc_image(7, (240, 320), (120, 160), 8)
    prompts = Prompts(box=(150, 110, 170, 130))
    embed = crop_encoder(default_model, image)
    one = [default_model.decode(embed(None), prompts)] + [
        decode_zoomed(default_model, image.shape, prompts, embed, context=c, min_side=32) for c in (1.5, 3.0)]
    averaged = np.mean([logits_to_pixels(p.logits, image.shape) for p in one], axis=0)
    pred = decode_multiscale(default_model, image.shape, prompts, embed, contexts=(None, 1.5, 3.0), min_side=32)
    assert np.array_equal(pred.mask, averaged > 0)
    assert np.isclose(pred.score, np.mean([p.score for p in one]))
    dice = 2 * (pred.mask & disc).sum() / (pred.mask.sum() + disc.sum())
    assert dice > 0.8, dice
    # multimask: the average first, then the whole image's alternatives
    alternatives = default_model.decode(embed(None), prompts, multimask=True)
    several = decode_multiscale(default_model, image.shape, prompts, embed, contexts=(None, 1.5, 3.0), min_side=32,
                                multimask=True)
    assert np.array_equal(several.masks[0], pred.mask) and np.array_equal(several.masks[1:], alternatives.masks)

    predictor = Predictor(default_model)
    zoomed = ZoomedPredictor(predictor, (None, 1.5, 3.0))
    first = zoomed.predict(image, prompts, key="slice")
    assert predictor.encoder_calls == 3 and np.array_equal(first.mask, pred.mask)
    zoomed.predict(image, Prompts([[160, 120]], [1], prompts.box), key="slice")   # a click inside the box
    assert predictor.encoder_calls == 3   # the same crops, from the cache
    # a box's crops encoded ahead (as a server's encode job does): its answer then only decodes
    moved = Prompts(box=(140, 100, 175, 140))
    assert zoomed.prepare(image, moved, key="slice") == 2 and predictor.encoder_calls == 5
    assert zoomed.prepare(image, Prompts([[160, 120]], [1]), key="slice") == 0   # no box: nothing to zoom on
    zoomed.predict(image, moved, key="slice")
    assert predictor.encoder_calls == 5


def test_a_boxs_corrective_clicks_can_be_answered_on_the_whole_image_without_new_crops(default_model):
    from sonosam.predictor import Predictor
    from sonosam.zoom import ZoomedPredictor

    image = disc_image(7, (240, 320), (120, 160), 8)[0]
    predictor, plain = Predictor(default_model), Predictor(default_model)
    zoomed = ZoomedPredictor(predictor, (None, 1.5, 3.0), zoom_clicks=False)
    box = (150, 110, 170, 130)
    zoomed.predict(image, Prompts(box=box), key="slice")
    assert predictor.encoder_calls == 3   # the box: the whole image and its two crops
    corrected = Prompts([[160, 120], [200, 150]], [1, 0], box)   # a click inside the box and one far outside it
    assert zoomed.prepare(image, corrected, key="slice") == 0
    answer = zoomed.predict(image, corrected, key="slice")
    assert predictor.encoder_calls == 3   # no crop moved to take the outside click in: nothing encoded
    assert np.array_equal(answer.masks, plain.predict(image, corrected, key="slice").masks)


def test_a_users_box_takes_the_scales_its_model_was_measured_at_and_no_other_model_changes():
    from types import SimpleNamespace

    from sonosam.models import get_spec, list_models
    from sonosam.zoom import ZoomedPredictor, interactive_predictor

    as_predictor = lambda spec: SimpleNamespace(model=SimpleNamespace(spec=spec))
    measured = {"litemedsam", "litemedsam_clicks",   # docs/training.md: both passed their registered tests
                "litemedsam_boxes"}                  # trained from litemedsam_clicks, measured at its scales
    for name in measured:
        zoomed = interactive_predictor(as_predictor(get_spec(name)))
        assert isinstance(zoomed, ZoomedPredictor) and zoomed.scales == (None, 1.5, 3), name
        assert not zoomed.zoom_clicks, name   # the box alone at its scales, its corrections on the whole image
    for spec in list_models():   # every other model answers on the whole image
        if spec.name not in measured:
            plain = as_predictor(spec)
            assert interactive_predictor(plain) is plain, spec.name
    stand_in = SimpleNamespace(predict=None)   # e.g. a server's client or a test's predictor: left as it is
    assert interactive_predictor(stand_in) is stand_in


def test_bad_box_scales_are_refused_in_one_line_naming_where_they_came_from(tmp_path):
    import json

    import pytest

    from sonosam.errors import SonoSAMError, WeightsNotAvailableError
    from sonosam.models import register_checkpoint
    from sonosam.zoom import check_scales

    assert check_scales(3) == (3,) and check_scales([None, 1.5, 3]) == (None, 1.5, 3)
    for bad in ("3", [None, 0.5], [True], []):
        with pytest.raises(SonoSAMError, match="context="):
            check_scales(bad)
    shipped = Path(__file__).resolve().parents[2] / "sonosam" / "weights" / "litemedsam_clicks.json"
    meta = json.loads(shipped.read_text())
    meta["box_scales"] = [None, "big"]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(meta))
    with pytest.raises(WeightsNotAvailableError, match=r"edited\.json: box_scales context="):
        register_checkpoint(edited)

