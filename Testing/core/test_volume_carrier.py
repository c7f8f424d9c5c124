"""Propagation's carrier (PropagationOptions.carrier): the shipped slice decoder answers the propagated slices of
litemedsam_clicks' fronts from the same embeddings, the seed stays the model's own, and a carrier over another
encoder is refused with a clear error. Real models, real Colin27 slices."""

import numpy as np
import pytest
import torch

from sonosam.errors import PromptError
from sonosam.predictor import Predictor
from sonosam.volume import Seed, carrier_for, propagate


def test_auto_picks_the_measured_pairing_only():
    assert carrier_for("litemedsam_clicks") == "litemedsam_slices"
    assert carrier_for("litemedsam") is None and carrier_for("sam_vit_b") is None


def test_carrier_answers_the_propagated_slices_from_the_same_embeddings(colin_stack):
    from sonosam.models import load_model

    stack, labels, window = colin_stack
    predictor = Predictor(load_model("litemedsam_clicks", device="cpu"))
    rows, cols = np.nonzero(labels[3] == 77)
    seed = Seed(3, box=(cols.min() - 2, rows.min() - 2, cols.max() + 2, rows.max() + 2))
    carried = propagate(predictor, stack, [seed], window=window)
    calls = predictor.encoder_calls
    alone = propagate(predictor, stack, [seed], window=window, carrier=None)
    assert predictor.encoder_calls == calls              # no second encoding: one encoder, two decoders
    assert np.array_equal(carried.slice_mask(3), alone.slice_mask(3))   # the seed is the model's own
    propagated = [i for i, s in carried.slices.items() if s.status == "propagated"]
    assert propagated and any(not np.array_equal(carried.slice_mask(i), alone.slice_mask(i)) for i in propagated)
    predictor.close()


def test_a_carrier_over_another_encoder_is_refused(colin_stack, tmp_path):
    from sonosam.models import load_model
    from sonosam.train.checkpoint import save_checkpoint

    other = load_model("litemedsam", device="cpu")
    with torch.no_grad():
        next(other.sam.image_encoder.parameters()).add_(0.01)
    _, meta = save_checkpoint(other, tmp_path / "other.pth", name="other_encoder", weights="full")
    stack, labels, window = colin_stack
    predictor = Predictor(load_model("litemedsam_clicks", device="cpu"))
    with pytest.raises(PromptError, match="another image encoder"):
        propagate(predictor, stack, [Seed(3, box=(60, 80, 120, 140))], window=window, carrier=str(meta))
    predictor.close()


@pytest.mark.slow
def test_second_opinion_answers_where_the_carrier_fails(colin_stack, tmp_path):
    """A carrier whose every answer is empty ends the front next to the seed; with second_opinion the predictor's
    own model answers those slices afresh, exactly as it does with no carrier at all."""
    from sonosam.models import load_model
    from sonosam.train.checkpoint import save_checkpoint

    broken = load_model("litemedsam_slices", device="cpu")
    with torch.no_grad():   # no mask hypernetwork: every mask logit is 0, every mask empty
        for p in broken.sam.mask_decoder.output_hypernetworks_mlps.parameters():
            p.zero_()
    _, meta = save_checkpoint(broken, tmp_path / "broken.pth", name="broken_carrier", weights="decoder")
    stack, labels, window = colin_stack
    predictor = Predictor(load_model("litemedsam_clicks", device="cpu"))
    rows, cols = np.nonzero(labels[3] == 77)
    seed = Seed(3, box=(cols.min() - 2, rows.min() - 2, cols.max() + 2, rows.max() + 2))
    lost = propagate(predictor, stack, [seed], window=window, carrier=str(meta))
    assert not [s for s in lost.slices.values() if s.status == "propagated"]
    assert {s.reason for s in lost.slices.values() if s.status == "stopped"} == {"the mask vanished"}
    helped = propagate(predictor, stack, [seed], window=window, carrier=str(meta), second_opinion=True)
    alone = propagate(predictor, stack, [seed], window=window, carrier=None)
    propagated = [i for i, s in helped.slices.items() if s.status == "propagated"]
    assert propagated and all(helped.slices[i].candidate == "second opinion" for i in propagated)
    assert all(np.array_equal(helped.slice_mask(i), alone.slice_mask(i)) for i in propagated)
    predictor.close()
