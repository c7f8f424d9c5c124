"""Click-training data (issue 14): held-out parts never share an image or a slab with training, the
ultrasound-style augmentation keeps the grid and is deterministic, the echo blood-pool reference finds the
left ventricle of the real A4C frame, and the gentle mask-prompt initialisation starts near "no mask"."""

import numpy as np
import pytest
import torch

from sonosam.train.click_data import blood_pools, build_sources, ct_references, slab_part, ultrasound_style


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


def test_embedding_images_hold_no_held_out_frame():
    """The student's extra unlabelled images come from training blocks only: no A4C frame of a validation or test
    block is among them (the loop repeats a frame 7 times, each time inside one block)."""
    from sonosam.track.synthetic import echo_frame
    from sonosam.train.click_data import embedding_images

    images = embedding_images()
    a4c = [im for im in images["echo"] if im.shape == (480, 640)]
    assert len(a4c) == 40 + 60 and len(images["echo"]) == 100 + 30   # 40 frames, 60 warps, the PLAX loop's 30
    assert images["mri_us"] and all(im.dtype == np.uint8 and (im == 0).any() for im in images["mri_us"])
    held = [echo_frame(i) for i in range(120) if slab_part(i, 15) != "train"]
    assert not any(np.array_equal(im, frame) for im in a4c for frame in held)


def test_the_ultrasound_style_mri_has_a_validation_part_apart_from_its_training_and_test_images():
    """Selection judges every source on its validation part; this one had none until stop 51 (a click-start rule then
    failed on it unseen). The counts are the same on every checkout (the copies no longer depend on the data's path)."""
    split = build_sources(("mri_us",))["mri_us"].split
    train, val, test = ({s.key for s in part} for part in (split.train, split.val, split.test))
    assert (len(split.train), len(split.val), len(split.test)) == (212, 42, 55) and len(val) == 4
    assert not val & train and not val & test


def test_ultrasound_style_copies_are_the_same_wherever_the_data_lies():
    from sonosam.evaluate.datasets import Sample
    from sonosam.train.click_data import _ultrasound_copies

    yy, xx = np.indices((96, 96))
    mask = np.hypot(yy - 60, xx - 48) < 12
    image = (40 + 80 * mask + xx).astype(np.float32)
    copies = [_ultrasound_copies({"train": [Sample(image, mask, "s", (f"{root}/templates/ch2.nii.gz", 0, 24), 1,
                                                   {"source": "mri"})]})["train"] for root in ("/a", "/b/c")]
    assert len(copies[0]) == len(copies[1]) == 1
    assert np.array_equal(copies[0][0].image, copies[1][0].image)


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
    # CT is shown as the product shows it (the volume's window), not clipped to soft tissue: air is black,
    # bone bright, and the fat and partial air between them keep their greys (a -100..300 HU clip made them black)
    hu = ct_references()[0]
    sample = sources["ct"].split.test[0]
    shown, slice_hu = sample.image, np.moveaxis(hu, sample.meta["axis"], 0)[sample.meta["slice"]]
    assert shown.dtype == np.uint8
    assert shown[slice_hu <= -1000].mean() < 5 and shown[slice_hu >= 1000].mean() > 150
    between = (slice_hu > -900) & (slice_hu < -200)
    assert between.sum() > 50 and 10 < shown[between].mean() < 120


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


def test_rule_checks_slack_is_the_margin_left_and_its_sign_is_the_verdict():
    from sonosam.train.click_decoder import NEW_ROW, OLD_ROW, rule_checks, ship_rule

    def row(curve, box):
        return {**{f"dice@{k + 1}": v for k, v in enumerate(curve)}, "box": box}

    old = row([0.50, 0.50, 0.60, 0.60, 0.60], 0.70)
    rows = {"a": {OLD_ROW: old, NEW_ROW: row([0.52, 0.52, 0.62, 0.62, 0.63], 0.685)}}
    slack, weakest = min(rule_checks(rows))
    assert slack == pytest.approx(-0.005) and weakest.startswith("a box: 1.5 points below")   # the binding check
    assert not ship_rule(rows)[0]
    rows["a"][NEW_ROW]["box"] = 0.695
    assert min(rule_checks(rows))[0] == pytest.approx(0.005)   # now Dice@5's +3 - 1 is not the weakest: box's 0.5
    assert ship_rule(rows)[0]


@pytest.mark.slow
def test_select_by_rule_keeps_the_candidate_with_the_most_slack_on_real_decoders(tmp_path, echo_frames):
    """Two 'epochs' - the shipped click decoder and LiteMedSAM's box-only decoder declared clickable - scored
    on a real echo frame: the click decoder, judged against itself, fails only by its own curve and the +1 point
    it cannot gain; LiteMedSAM's decoder, which never learnt clicks, has far less slack. The kept weights are the
    click decoder's (unmixed on a tie) and the .json names every candidate."""
    from sonosam.models import load_model
    from sonosam.train.checkpoint import save_checkpoint
    from sonosam.train.click_decoder import select_by_rule
    from sonosam.train.finetune import clickable

    old = load_model("litemedsam_clicks", device="cpu")
    save_checkpoint(old, tmp_path / "epochs" / "epoch_01.pth", weights="decoder", base_model="litemedsam")
    save_checkpoint(clickable(load_model("litemedsam", device="cpu"), mask=False),
                    tmp_path / "epochs" / "epoch_02.pth", weights="decoder")
    from sonosam.evaluate.datasets import Sample

    frame = echo_frames[0]
    val = [Sample(frame, blood_pools(frame) == 1, "LV blood pool", ("a4c", 0))]   # the real left ventricle
    label, trials = select_by_rule(tmp_path, tmp_path / "epochs" / "epoch_01.pth", {"echo": val, "none": []},
                                   str(tmp_path / "cache"), tmp_path / "epochs", [0.5, 1.0], {"test": True}, top=1)
    assert label == "epoch 1"
    assert trials["epoch 1"]["slack"] <= -0.01 + 1e-9                  # identical rows: no gain
    assert trials["epoch 2"]["slack"] < trials["epoch 1"]["slack"]
    assert set(trials) == {"epoch 1", "epoch 2", "epoch 1 mixed 0.5"}  # mixes only for the top epoch
    kept = load_model(str(tmp_path / "decoder.pth"), device="cpu")
    key = "mask_decoder.output_upscaling.0.weight"
    assert torch.allclose(kept.sam.state_dict()[key].float(), old.sam.state_dict()[key].float())
    import json

    selection = json.loads((tmp_path / "decoder.json").read_text())["training"]["selection"]
    assert selection["kept"] == "epoch 1" and len(selection["candidates"]) == 3


def test_held_out_rows_are_kept_per_test_content(tmp_path):
    from sonosam.evaluate.datasets import Sample
    from sonosam.train.click_decoder import rows_file

    image, mask = np.zeros((32, 32), np.uint8), np.zeros((32, 32), bool)
    image[8:20, 8:20], mask[8:20, 8:20] = 200, True
    test = [Sample(image, mask, "a", ("a",))]
    path = rows_file(tmp_path, "ct", "litemedsam_clicks (previous)", test, local=True)
    assert path == rows_file(tmp_path, "ct", "litemedsam_clicks (previous)", [Sample(image.copy(), mask, "a", ("a",))],
                             local=True)
    shown_otherwise = [Sample(image // 2, mask, "a", ("a",))]   # same structure, other window: measured afresh
    assert rows_file(tmp_path, "ct", "litemedsam_clicks (previous)", shown_otherwise, local=True) != path
    assert rows_file(tmp_path, "ct", "litemedsam_clicks (previous)", test, local=False) != path
    assert path.parent == tmp_path / "rows" and path.name.startswith("ct__litemedsam_clicks_") and "_local" in path.name
