"""Decoder fine-tuning and distillation on real MRI slices (Colin27 T1 + AAL labels), CPU, small.

Training images: three axial slices; held-out image: an axial slice from another slab. Validation
uses the held-out slice's training structures, the test its held-out structures (AAL pairs never
trained on), so the held-out Dice is measured on structure-slices training never saw."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from sonosam.errors import SonoSAMError
from sonosam.evaluate import colin27_samples
from sonosam.models import list_models, load_model
from sonosam.train import EmbeddingStore, TrainConfig, clickable, evaluate_cached, save_checkpoint, train_decoder
from sonosam.train.data import _is_test_structure

pytestmark = pytest.mark.slow  # trains decoders and students on real embeddings

TRAIN_SLICES, HELD_OUT_SLICE = (72, 90), 108


def _samples(slices):
    return colin27_samples(labels=None, axis=0, min_area=300, max_samples=None, slices=slices)


@pytest.fixture(scope="module")
def data():
    train = [s for s in _samples(TRAIN_SLICES) if not _is_test_structure(s.label, 5)]
    held = _samples([HELD_OUT_SLICE])
    val = [s for s in held if not _is_test_structure(s.label, 5)][:4]
    test = [s for s in held if _is_test_structure(s.label, 5)]
    assert len(train) >= 16 and len(test) >= 3
    return train, val, test


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    train, val, test = data
    folder = tmp_path_factory.mktemp("train")
    model = load_model("litemedsam", device="cpu")
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    config = TrainConfig(epochs=3, batch_size=4, samples_per_epoch=16, max_corrections=1, val_samples=4,
                         val_clicks=3, cache_dir=str(folder / "cache"), progress=False)
    result = train_decoder(model, train, val, config, folder / "mri_decoder.pth", name="test_mri_decoder",
                           data_summary={"what": "test"}, log=None)
    return model, before, result, folder


def test_fine_tuning_lowers_loss_and_changes_only_the_decoder(trained):
    model, before, result, _ = trained
    assert len(result.epochs) == 3 and result.steps == 12
    assert result.epochs[-1]["loss"] < result.epochs[0]["loss"]
    after = model.sam.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in changed)
    assert any(k.startswith("mask_decoder.") for k in changed)


def test_held_out_dice_beats_the_base_model_at_1_and_3_clicks(trained, data):
    model, _, result, folder = trained
    _, _, test = data
    tuned = load_model(str(result.checkpoint), device="cpu")        # the best-validation checkpoint
    base = clickable(load_model("litemedsam", device="cpu"))        # base decoder, given the clicks as they are
    store = EmbeddingStore(folder / "cache", base)
    b = evaluate_cached(base, store, test, n_clicks=3)
    t = evaluate_cached(tuned, store, test, n_clicks=3)
    print(f"held-out Dice base {b} / fine-tuned {t}")
    assert store.encoder_calls == 0                                 # embeddings came from the disk cache
    assert t["dice@1"] > b["dice@1"] and t["dice@3"] > b["dice@3"]


def test_checkpoint_metadata_and_registry(trained):
    model, _, result, folder = trained
    meta = json.loads(result.metadata.read_text())
    assert meta["base_model"] == "litemedsam" and meta["weights"] == "full"
    assert meta["image_size"] == 256 and meta["normalization"] == "minmax"
    assert set(meta["prompt_kinds"]) == {"point", "box", "mask"}
    assert meta["training"]["data"]["what"] == "test" and meta["training"]["config"]["lr"] == 1e-4
    from sonosam.models.weights import file_digest
    assert meta["sha256"] == file_digest(result.checkpoint)
    loaded = load_model(str(result.checkpoint), device="cpu")
    assert loaded.spec.name == "test_mri_decoder" and "point" in loaded.spec.prompt_kinds
    assert "test_mri_decoder" in [s.name for s in list_models()]
    # the plain state dict also loads as an ordinary checkpoint of the base architecture
    assert load_model("litemedsam", checkpoint=result.checkpoint, device="cpu").spec.name == "litemedsam"


def test_decoder_only_fp16_overlay_loads_over_the_base(trained):
    model, _, _, folder = trained
    pth, meta_path = save_checkpoint(clickable(model), folder / "overlay.pth", name="test_overlay",
                                     weights="decoder", dtype="float16")
    assert pth.stat().st_size < 10 * 2**20
    loaded = load_model(str(meta_path), device="cpu")
    ref, got = model.sam.state_dict(), loaded.sam.state_dict()
    key = "mask_decoder.iou_token.weight"
    assert torch.allclose(got[key], ref[key].half().float())
    enc = "image_encoder.patch_embed.seq.0.c.weight"
    assert torch.equal(got[enc], load_model("litemedsam", device="cpu").sam.state_dict()[enc])


def test_resume_continues_from_the_saved_epoch(trained, data):
    model, _, result, folder = trained
    train, val, _ = data
    config = TrainConfig(epochs=3, batch_size=4, samples_per_epoch=16, max_corrections=1, val_samples=4,
                         cache_dir=str(folder / "cache"), progress=False)
    again = train_decoder(model, train, val, config, folder / "mri_decoder.pth", resume=True, log=None)
    assert again.steps == result.steps and len(again.epochs) == 3      # nothing left to do


def test_checkpoint_segments_in_the_cli(trained, data, tmp_path):
    from sonosam.cli import main
    from sonosam.data import mri_colin27_paths
    from sonosam.evaluate import centroid_click

    _, _, result, _ = trained
    _, _, test = data
    sample = test[0]
    click = centroid_click(sample.mask)
    out = tmp_path / "mask.nii.gz"
    rc = main(["segment", str(mri_colin27_paths()[0]), "--slice", str(HELD_OUT_SLICE), "--axis", "k",
               "--model", str(result.checkpoint), "--point", f"{click.x},{click.y}", "-o", str(out)])
    assert rc == 0 and out.exists()
    import SimpleITK as sitk
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))[HELD_OUT_SLICE] > 0
    assert mask[click.y, click.x] and 0 < mask.sum() < mask.size / 4


def test_student_inherits_the_teachers_blocks():
    from sonosam.train.distillation import DEFAULT_STUDENT, build_student, inherited_encoder_state, kept_blocks

    assert kept_blocks(6, 2) == [0, 5] and kept_blocks(2, 1) == [0] and kept_blocks(6, 3) == [0, 2, 5]
    teacher = load_model("litemedsam_clicks", device="cpu")
    student, architecture = build_student(teacher, DEFAULT_STUDENT)
    assert architecture["from_teacher"] and architecture["encoder"]["depths"] == [1, 1, 2, 1]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(student.sam.image_encoder) < 0.6 * count(teacher.sam.image_encoder)
    assert count(student.sam) < count(teacher.sam)
    ours, theirs = student.sam.state_dict(), teacher.sam.state_dict()
    _, origin = inherited_encoder_state(teacher.sam.image_encoder, [1, 1, 2, 1])
    assert {"image_encoder." + k for k in origin} == {k for k in ours if k.startswith("image_encoder.")}
    for key, source in origin.items():           # every student encoder tensor is one of the teacher's
        assert torch.equal(ours["image_encoder." + key], theirs["image_encoder." + source]), key
    assert origin["layers.2.blocks.1.attn.qkv.weight"] == "layers.2.blocks.5.attn.qkv.weight"
    assert origin["neck.0.weight"] == "neck.0.weight" and origin["layers.0.downsample.conv1.c.weight"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k.startswith(("prompt_encoder.", "mask_decoder.")))
    assert student.spec.prompt_kinds == teacher.spec.prompt_kinds          # points and boxes, no mask prompt
    tiny, architecture = build_student(teacher, "tinyvit-xs-random")     # a random encoder, the teacher's decoder
    assert not architecture["from_teacher"] and count(tiny.sam.image_encoder) < count(student.sam.image_encoder)
    assert torch.equal(tiny.sam.state_dict()["mask_decoder.iou_token.weight"], theirs["mask_decoder.iou_token.weight"])


def test_image_grouped_order_keeps_an_images_samples_together():
    from sonosam.train.distillation import image_grouped_order

    keys = ["a", "b", "a", "c", "b", "a"]
    order = image_grouped_order(keys, np.random.default_rng(0))
    assert sorted(order) == list(range(6))
    runs = [keys[i] for i in order]
    assert len([k for i, k in enumerate(runs) if i == 0 or runs[i - 1] != k]) == 3   # one run per image


def test_distillation_student_is_smaller_and_its_losses_fall(data, trained, capsys):
    from sonosam.train.distillation import DistillConfig, distill

    train, _, test = data
    model, _, result, folder = trained
    teacher = load_model(str(result.checkpoint), device="cpu")
    picked = [s for s in train if s.key == train[0].key][:4]          # one image: one encoder pass per step
    config = DistillConfig(epochs=1, batch_size=4, lr=1e-4, max_corrections=0, warmup_epochs=1, warmup_batch=1,
                           warmup_lr=5e-4, embedding_weight=0.5, cache_dir=str(folder / "cache"), progress=False,
                           probe_samples=2)
    out = distill(teacher, picked, config, output=folder / "student.pth", name="test_student")
    printed = capsys.readouterr().out
    assert "teacher" in printed and "student" in printed and "embedding epoch 1" in printed
    assert out.student_parameters < out.teacher_parameters
    assert out.student_encoder_parameters < out.teacher_encoder_parameters
    assert len(out.warmup_losses) == 1 and len(out.losses) == 1
    assert out.probe_embedding_after < out.probe_embedding_before
    assert out.probe_loss_after < out.probe_loss_before
    student = load_model(str(folder / "student.pth"), device="cpu")
    assert sum(p.numel() for p in student.sam.parameters()) == out.student_parameters
    assert student.spec.prompt_kinds == teacher.spec.prompt_kinds
    ours, theirs = student.sam.state_dict(), teacher.sam.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k.startswith("mask_decoder."))   # frozen
    assert not torch.equal(ours["image_encoder.neck.0.weight"], theirs["image_encoder.neck.0.weight"])   # trained
    # a later run can continue this student's encoder (DistillConfig.init) instead of the teacher's blocks
    again = distill(teacher, picked, dataclasses.replace(config, epochs=0, warmup_epochs=0,
                                                         init=str(folder / "student.pth")), log=None)
    continued = again.student.sam.image_encoder.state_dict()
    assert all(torch.equal(continued[k], ours["image_encoder." + k]) for k in continued)

    held = test[:1]
    rows = {"teacher": evaluate_cached(teacher, EmbeddingStore(folder / "cache", teacher), held, n_clicks=1),
            "student": evaluate_cached(student, EmbeddingStore(folder / "student_cache", student), held, n_clicks=1)}
    print(f"held-out Dice after 1 click: teacher {rows['teacher']['dice@1']:.3f}, "
          f"student {rows['student']['dice@1']:.3f}")
    assert all(np.isfinite(r["dice@1"]) for r in rows.values())


def test_box_keep_holds_box_answers_and_click_weight_trains(data, tmp_path):
    """box_keep pulls the answers to a box alone toward the starting decoder; click_weight adds the per-click
    term to the loss. Same seed, steps and draws in the three runs."""
    from sonosam.train.finetune import PromptDecoder
    from sonosam.train.losses import bernoulli_kl
    from sonosam.train.prompts import PromptSampler, to_model_inputs

    train, _, _ = data
    start = load_model("litemedsam", device="cpu")
    store = EmbeddingStore(tmp_path / "cache", start)
    boxes = [PromptSampler(np.random.default_rng(0), point_start=0.0).start(s.mask) for s in train[:8]]
    features = torch.stack([store.get(s.image).features for s in train[:8]])
    tensors = to_model_inputs(boxes, [s.mask.shape for s in train[:8]], start.transform, torch.device("cpu"))

    def box_answers(model):
        with torch.no_grad():
            return PromptDecoder(model.sam.prompt_encoder, model.sam.mask_decoder)(features, None, tensors.boxes)[0]

    before = box_answers(start)
    drift, first_loss = {}, {}
    runs = {"plain": (0.0, 0.0, False), "box kept": (200.0, 0.0, False), "clicks weighted": (0.0, 1.0, False),
            "box kept every step": (200.0, 0.0, True)}
    for run, (keep, weight, every) in runs.items():
        model = load_model("litemedsam", device="cpu")
        config = TrainConfig(epochs=2, batch_size=4, samples_per_epoch=16, max_corrections=2, lr=1e-3,
                             val_samples=None, cache_dir=str(tmp_path / "cache"), progress=False,
                             box_keep=keep, click_weight=weight, box_keep_every=every)
        result = train_decoder(model, train, [], config, log=None, anchor=start)
        drift[run] = bernoulli_kl(box_answers(model), before).mean().item()
        first_loss[run] = result.losses[0]
    print("box answers' drift from the start (KL):", drift, "first-step losses:", first_loss)
    assert drift["box kept"] < 0.5 * drift["plain"]                   # measured 0.010 against 0.025
    assert first_loss["box kept"] == first_loss["plain"]              # no pull before the weights move
    assert first_loss["clicks weighted"] > first_loss["plain"]        # the click term is in the loss
    assert drift["box kept every step"] < 0.5 * drift["plain"]        # a box drawn on every step holds them too


def test_an_overlay_keeps_the_box_scales_it_is_given(trained, tmp_path, monkeypatch):
    import sonosam.models

    monkeypatch.setattr(sonosam.models, "_REGISTRY", dict(sonosam.models._REGISTRY))   # its models leave with it
    model, _, _, _ = trained
    _, meta_path = save_checkpoint(clickable(model), tmp_path / "scaled.pth", name="test_scaled", weights="decoder",
                                   box_scales=[None, 1.5, 3])
    assert load_model(str(meta_path), device="cpu").spec.box_scales == (None, 1.5, 3)
    _, plain = save_checkpoint(clickable(model), tmp_path / "plain.pth", name="test_plain", weights="decoder")
    assert load_model(str(plain), device="cpu").spec.box_scales == (None,)
    with pytest.raises(SonoSAMError, match="numbers >= 1"):
        save_checkpoint(clickable(model), tmp_path / "bad.pth", weights="decoder", box_scales=[0.5])
    assert not (tmp_path / "bad.pth").exists()


def test_the_box_decoder_recipe_trains_on_boxes_alone_and_saves_a_box_session_model(data, tmp_path, monkeypatch):
    """sonosam.train.box_decoder: litemedsam_clicks' decoder, loose boxes alone, BCE + soft Dice; the checkpoint
    loads as a model whose box sessions take the trained decoder and everything else litemedsam_clicks'."""
    import sonosam.models
    from sonosam.train.box_decoder import recipe, train_box_decoder

    monkeypatch.setattr(sonosam.models, "_REGISTRY", dict(sonosam.models._REGISTRY))   # its models leave with it
    train, _, _ = data
    config = recipe(steps=3, batch_size=4, cache_dir=str(tmp_path / "cache"))
    config.progress = False
    assert (config.point_start, config.max_corrections, config.mask_feedback, config.mask_loss) == (0, 0, False,
                                                                                                     "bce_dice")
    model, result = train_box_decoder(train, [1.0] * len(train), config)
    assert result.steps == 3 and np.isfinite(result.losses).all()
    start, trained = load_model("litemedsam_clicks", device="cpu").sam.state_dict(), model.sam.state_dict()
    changed = [k for k in start if not torch.equal(start[k], trained[k])]
    assert changed and all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in changed)
    _, meta = save_checkpoint(model, tmp_path / "boxes.pth", name="test_boxes", weights="decoder", dtype="float16",
                              base_model="litemedsam", box_sessions_of="litemedsam_clicks")
    loaded = load_model(str(meta), device="cpu")
    assert all(torch.equal(v, start[k]) for k, v in loaded.sam.state_dict().items())
    session = loaded.box_session_model.sam.state_dict()
    assert all(torch.equal(session[k], trained[k].half().float()) for k in changed)
