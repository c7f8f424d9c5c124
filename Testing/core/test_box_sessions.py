"""litemedsam_boxes: litemedsam_clicks with a second decoder, trained on boxes, for a user's box sessions
(ModelSpec.box_sessions_of, sonosam.zoom.interactive_predictor)."""

import json

import numpy as np
import pytest
import torch

from sonosam.errors import WeightsNotAvailableError
from sonosam.models import load_model, register_checkpoint
from sonosam.predictor import Predictor
from sonosam.prompts import Prompts
from sonosam.zoom import BoxSessionPredictor, ZoomedPredictor, interactive_predictor

LV_BOX = (300, 70, 440, 270)   # the left ventricle in frame 0 of the A4C loop (Testing/conftest.py)


@pytest.fixture(scope="module")
def boxes():
    return load_model("litemedsam_boxes", device="cpu")


def test_everything_but_box_sessions_is_litemedsam_clicks_on_one_encoder(boxes):
    from sonosam.volume import carrier_for

    clicks = load_model("litemedsam_clicks", device="cpu")
    main, reference = boxes.sam.state_dict(), clicks.sam.state_dict()
    assert all(torch.equal(main[k], reference[k]) for k in reference)
    session = boxes.box_session_model
    trained = session.sam.state_dict()
    changed = [k for k in reference if not torch.equal(trained[k], reference[k])]
    assert changed and all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in changed)
    assert session.sam.image_encoder is boxes.sam.image_encoder and session.model_id == boxes.model_id
    assert boxes.spec.name == session.spec.name == "litemedsam_boxes"
    assert boxes.spec.box_scales == (None, 1.5, 3) and boxes.spec.prompt_kinds == clicks.spec.prompt_kinds
    assert carrier_for("litemedsam_boxes") == carrier_for("litemedsam_clicks") == "litemedsam_slices"


def test_a_box_session_goes_to_the_box_decoder_and_clicks_alone_to_the_click_decoder(boxes, echo_frames):
    image = echo_frames[0]
    predictor = Predictor(boxes)
    route = interactive_predictor(predictor)
    assert isinstance(route, ZoomedPredictor) and isinstance(route.predictor, BoxSessionPredictor)
    box = route.predict(image, Prompts(box=LV_BOX), key="frame0")
    assert predictor.encoder_calls == 3   # the whole frame and the box's two crops, once for both decoders
    embedding = predictor.embedding(image, "frame0")

    corrected = Prompts([[370, 170], [300, 260]], [1, 0], LV_BOX)   # a box's corrections: the box decoder
    answer = route.predict(image, corrected, key="frame0")
    assert np.array_equal(answer.masks, boxes.box_session_model.decode(embedding, corrected).masks)
    assert not np.array_equal(answer.masks, boxes.decode(embedding, corrected).masks)

    clicks = Prompts([[370, 170]], [1])                              # clicks alone: the click decoder
    answer = route.predict(image, clicks, key="frame0")
    assert np.array_equal(answer.masks, boxes.decode(embedding, clicks).masks)
    assert predictor.encoder_calls == 3

    plain = ZoomedPredictor(Predictor(boxes), (None, 1.5, 3), zoom_clicks=False)   # the click decoder's box
    assert not np.array_equal(box.masks, plain.predict(image, Prompts(box=LV_BOX), key="frame0").masks)
    assert box.mask[170, 370] and not box.mask[20, 20]   # the ventricle, not the frame


def test_a_box_decoder_without_its_partner_is_refused_in_one_line(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    import sonosam.models

    monkeypatch.setattr(sonosam.models, "_REGISTRY", dict(sonosam.models._REGISTRY))   # its model leaves with it

    shipped = Path(__file__).resolve().parents[2] / "sonosam" / "weights"
    shutil.copy2(shipped / "litemedsam_boxes.pth", tmp_path / "litemedsam_boxes.pth")
    meta = json.loads((shipped / "litemedsam_boxes.json").read_text())
    meta.update(name="test_orphan_boxes", box_sessions_of="no_such_model")
    (tmp_path / "litemedsam_boxes.json").write_text(json.dumps(meta))
    register_checkpoint(tmp_path / "litemedsam_boxes.json")
    with pytest.raises(WeightsNotAvailableError, match="answers the box sessions of model 'no_such_model', which is "
                                                        "not installed here; install no_such_model"):
        load_model("test_orphan_boxes", device="cpu")


@pytest.mark.slow   # 10 CT structure-images, each encoded at three scales for two models
def test_box_sessions_on_held_out_ct_beat_the_click_decoders(boxes):
    """The reason the model exists: on the head CT's test slabs (never trained on), a box and two corrections
    answered by the box decoder end closer to the reference than litemedsam_clicks' answers."""
    from sonosam.evaluate.harness import evaluate
    from sonosam.train.click_data import build_sources
    from sonosam.train.finetune import _validation_subset

    test = _validation_subset(build_sources(["ct"])["ct"].split.test, 10)
    curves = {}
    for name, model in (("boxes", boxes), ("clicks", load_model("litemedsam_clicks", device="cpu"))):
        result = evaluate(interactive_predictor(Predictor(model)), test, n_clicks=3, start="box", progress=False,
                          local_corrections=True)
        curves[name] = np.nanmean(np.array(result.curves, float), axis=0)
    print("Dice after the box and each correction:", curves)
    assert curves["boxes"][0] > curves["clicks"][0] and curves["boxes"][-1] > curves["clicks"][-1]
