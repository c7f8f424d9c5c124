"""Click-training data (issue 14): held-out parts never share an image or a slab with training, the
ultrasound-style augmentation keeps the grid and is deterministic, the echo blood-pool reference finds the
left ventricle of the real A4C frame, and the gentle mask-prompt initialisation starts near "no mask"."""

import numpy as np
import pytest
import torch

from sonosam.train.click_data import blood_pools, build_sources, slab_part, ultrasound_style


def test_slab_rule():
    assert [slab_part(i) for i in (0, 11, 12, 24, 36, 47, 48)] == ["train", "train", "val", "train", "test",
                                                                     "test", "train"]


def test_ultrasound_style_keeps_the_grid_and_is_deterministic():
    rng = np.random.default_rng(0)
    image = (rng.random((120, 150)) * 200).astype(np.uint8)
    a, b, c = ultrasound_style(image, 3), ultrasound_style(image, 3), ultrasound_style(image, 4)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert (a == 0).mean() > 0.05          # outside the sector is black
    assert a[-1, image.shape[1] // 2] > 0 or a[-10, image.shape[1] // 2] > 0   # the sector reaches the bottom


def test_blood_pool_reference_finds_the_left_ventricle():
    from sonosam.track.synthetic import LV_BOX, echo_frame

    frame = echo_frame(0)
    labels = blood_pools(frame)
    assert labels.max() >= 1
    rows, cols = np.nonzero(labels == 1)          # the largest pool
    x0, y0, x1, y1 = LV_BOX                       # drawn by eye on this frame (tracking tests)
    assert x0 <= cols.mean() <= x1 and y0 <= rows.mean() <= y1


@pytest.mark.slow
def test_held_out_parts_share_no_image_and_no_slab_with_training():
    sources = build_sources(("ct", "echo"))
    for name, source in sources.items():
        split = source.split
        assert split.train and split.test, name
        train_keys = {s.key for s in split.train}
        assert not train_keys & {s.key for s in split.test} and not train_keys & {s.key for s in split.val}
        for sample in split.test:
            index = sample.meta.get("slice", sample.meta.get("frame"))
            slab = 15 if name == "echo" else (6 if sample.meta.get("axis") == 0 else 12)
            assert slab_part(index, slab) == "test"
        for sample in split.train:
            assert sample.mask.any() and sample.mask.shape == sample.image.shape[:2]


def test_gentle_mask_init_starts_near_no_mask():
    from sonosam.models import load_model
    from sonosam.train.click_decoder import gentle_mask_init

    encoder = load_model("litemedsam", device="cpu").sam.prompt_encoder
    logits = torch.full((1, 1, 256, 256), -8.0)
    logits[..., 80:170, 90:160] = 8.0
    no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    with torch.no_grad():
        before = (encoder._embed_masks(logits) - no_mask).pow(2).mean().sqrt()
        gentle_mask_init(encoder)
        after = (encoder._embed_masks(logits) - no_mask).pow(2).mean().sqrt()
    assert after < 0.3 * before                    # the mask prompt starts close to "no mask"...
    assert after > 0                               # ...but still carries the mask's signal


def test_mix_toward_interpolates_the_real_decoders_and_refuses_a_mismatch():
    from sonosam.models import load_model
    from sonosam.train.click_decoder import mix_toward

    prefixes = ("prompt_encoder.", "mask_decoder.")
    old = {k: v.float() for k, v in load_model("litemedsam_clicks", device="cpu").sam.state_dict().items()
           if k.startswith(prefixes)}
    new = {k: v.float() for k, v in load_model("litemedsam", device="cpu").sam.state_dict().items()
           if k.startswith(prefixes)}
    key = "mask_decoder.output_upscaling.0.weight"
    assert not torch.equal(old[key], new[key])     # the two decoders really differ
    assert torch.equal(mix_toward(new, old, 1.0)[key], new[key])
    assert torch.equal(mix_toward(new, old, 0.0)[key], old[key])
    half = mix_toward(new, old, 0.5)
    assert torch.allclose(half[key], (old[key] + new[key]) / 2, atol=1e-6)
    bad = dict(old)
    bad[key] = bad[key][:1]
    with pytest.raises(ValueError, match=key):
        mix_toward(new, bad, 0.5)


def test_shares_and_mix_options_parse_and_reject_bad_input(tmp_path):
    import argparse

    from sonosam.train.click_decoder import main, parse_alphas, parse_shares

    assert parse_shares("mri=0.45,mri_us=0.2,ct=0.2,echo=0.15") == {"mri": 0.45, "mri_us": 0.2, "ct": 0.2,
                                                                     "echo": 0.15}
    assert parse_alphas("0.5,0.25") == [0.25, 0.5, 1.0]
    for bad in ("mri:0.4", "mri=-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="--shares"):
            parse_shares(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="--mix"):
        parse_alphas("0.5,2")
    with pytest.raises(SystemExit):   # a source left out is refused before any work
        main(["--shares", "mri=1,ct=1", "--eval-only", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_plax_loop_is_found_and_its_model_free_box_lands_on_a_chamber():
    import pydicom

    from sonosam.data import echo_plax_path
    from sonosam.io.cine import _luminance
    from sonosam.train.click_data import blood_pools

    ds = pydicom.dcmread(echo_plax_path())
    assert (int(ds.NumberOfFrames), ds.Rows, ds.Columns) == (30, 600, 800)
    from pydicom.pixels import pixel_array

    pools = blood_pools(_luminance(pixel_array(str(echo_plax_path()), index=10)))
    assert (pools == 1).sum() > 2000   # the chamber scripts.click_sim_to_real boxes on this frame
