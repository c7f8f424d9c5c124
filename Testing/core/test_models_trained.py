"""Trained checkpoints and the registry (audit of the model layer): what is saved reloads as the model that was
trained, a checkpoint never replaces a built-in model or drops a trained decoder, malformed files are one line, and
training refuses what it cannot do right. Real weights (the bundled LiteMedSAM and the shipped decoders) and real
files throughout."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sonosam.models
from sonosam.errors import CheckpointError, TrainingError, UnsupportedPromptError, WeightsNotAvailableError
from sonosam.evaluate.datasets import Sample
from sonosam.models import get_spec, list_models, load_model, weights, weights_path
from sonosam.prompts import Prompts
from sonosam.train.checkpoint import save_checkpoint
from sonosam.train.distillation import build_student

SHIPPED = sonosam.models._SHIPPED
LV_BOX = (300, 70, 440, 270)   # the left ventricle in frame 0 of the A4C loop (Testing/conftest.py)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A private $SONOSAM_HOME, and a registry whose additions leave with the test."""
    monkeypatch.setenv("SONOSAM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sonosam.models, "_REGISTRY", dict(sonosam.models._REGISTRY))
    (tmp_path / "home" / "models").mkdir(parents=True)
    return tmp_path / "home"


def _shipped_copy(folder, stem, **change):
    """litemedsam_clicks' shipped files under another name, with `change` applied to its JSON (None: removed)."""
    meta = json.loads((SHIPPED / "litemedsam_clicks.json").read_text())
    meta.update(name=stem, file=f"{stem}.pth")
    for key, value in change.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    shutil.copy(SHIPPED / "litemedsam_clicks.pth", folder / f"{stem}.pth")
    (folder / f"{stem}.json").write_text(json.dumps(meta))
    return folder / f"{stem}.json"


def _encoder(model):
    return {k: v for k, v in model.sam.state_dict().items() if k.startswith("image_encoder.")}


# ------------------------------------------------------------------------------------- A1: decoder-only saves

def test_a_decoder_save_over_another_encoder_is_refused(default_model, tmp_path):
    state = {k: v.clone() for k, v in default_model.sam.state_dict().items()}
    state["image_encoder.neck.0.weight"] += 0.01          # a checkpoint whose encoder is not the base's
    torch.save(state, tmp_path / "mine.pth")
    mine = load_model("litemedsam", checkpoint=tmp_path / "mine.pth", device="cpu")
    with pytest.raises(TrainingError, match="is not litemedsam's.*--save full"):
        save_checkpoint(mine, tmp_path / "out.pth", weights="decoder")
    assert not (tmp_path / "out.pth").exists() and not (tmp_path / "out.json").exists()
    # the base's own encoder saves as before, and reloads over the same encoder
    _, meta = save_checkpoint(default_model, tmp_path / "fine.pth", weights="decoder", name="fine_test")
    assert json.loads(meta.read_text())["base_weights_sha256"] == weights.file_digest(weights_path(default_model.spec))


def test_a_students_decoder_saves_full_and_reloads_with_the_students_encoder(home, tmp_path):
    student, architecture = build_student(load_model("litemedsam", device="cpu"), "tinyvit-xs-random")
    with pytest.raises(TrainingError, match="--save full"):
        save_checkpoint(student, tmp_path / "small.pth", weights="decoder")
    # as train_decoder saves: no architecture given; the model's own is recorded
    pth, meta = save_checkpoint(student, tmp_path / "student_a.pth", weights="full")
    assert json.loads(meta.read_text())["architecture"] == json.loads(json.dumps(architecture))
    assert json.loads(meta.read_text())["mask_alone"] is False   # a trained decoder: not known to answer one
    # a distilled encoder keeps its decoder's answer to a mask alone through save and reload (it was lost)
    distilled, _ = save_checkpoint(student, tmp_path / "student_d.pth", weights="full", kind="distill")
    assert load_model(str(distilled), device="cpu").spec.mask_alone
    loaded = load_model(str(pth), device="cpu")
    assert all(torch.equal(loaded.sam.state_dict()[k], v) for k, v in _encoder(student).items())
    # and once more from the loaded student (train decoder --model STUDENT.pth)
    pth, _ = save_checkpoint(loaded, tmp_path / "student_b.pth", weights="full")
    again = load_model(str(pth), device="cpu")
    assert sum(p.numel() for p in again.sam.image_encoder.parameters()) == \
        sum(p.numel() for p in student.sam.image_encoder.parameters())


# ------------------------------------------------------------------- A2, A3: trained decoders and built-in names

@pytest.mark.parametrize("name", ["litemedsam_clicks", "litemedsam_boxes"])
def test_a_checkpoint_never_silently_drops_a_trained_decoder(name):
    with pytest.raises(CheckpointError, match=f"{name} is a decoder trained over litemedsam"):
        load_model(name, checkpoint=weights_path(get_spec("litemedsam")), device="cpu")


def test_a_trained_checkpoint_never_takes_a_built_in_name(home, tmp_path, default_model):
    from sonosam.train import train_decoder

    with pytest.raises(CheckpointError, match="built-in model's name"):    # training asks before any work
        train_decoder(default_model, [], [], output=tmp_path / "litemedsam.pth")   # the name: the file's stem
    with pytest.raises(CheckpointError, match="built-in"):
        train_decoder(default_model, [], [], output=tmp_path / "x.pth", name="litemedsam_clicks")
    assert not list(tmp_path.glob("*.pth"))
    # a file carrying a built-in's name (written by hand, or a recipe's copy) is registered under NAME@SHA
    meta = _shipped_copy(tmp_path, "litemedsam")
    with pytest.warns(UserWarning, match="registered as 'litemedsam@"):
        by_path = load_model(str(tmp_path / "litemedsam.pth"), device="cpu")
    assert by_path.spec.name == "litemedsam@" + json.loads(meta.read_text())["sha256"][:8]
    _shipped_copy(home / "models", "litemedsam_slices")
    with pytest.warns(UserWarning, match="litemedsam_slices.json"):
        names = [spec.name for spec in list_models()]
    assert any(n.startswith("litemedsam_slices@") for n in names)
    assert get_spec("litemedsam").overlay is None and load_model("litemedsam", device="cpu").checkpoint == \
        weights_path(get_spec("litemedsam"))
    assert get_spec("litemedsam_slices").where_to_get.startswith(str(SHIPPED))


# ------------------------------------------------------------------------------ C11, A9, D14, D15: JSON files

@pytest.mark.parametrize("change, message", [
    ({"name": None}, '"name" is missing'),
    ({"sha256": None}, '"sha256" is missing'),
    ({"architecture": "litemedsam"}, '"architecture" is "litemedsam"; it must be an object'),
    ({"architecture": {"encoder": [1, 2]}}, '"encoder" is'),
    ({"multimask": "false"}, '"multimask" is "false"; it must be true or false'),
    ({"prompt_kinds": "box"}, '"prompt_kinds" is "box"'),
])
def test_a_malformed_json_is_one_line_and_never_breaks_the_registry(home, tmp_path, change, message):
    meta = _shipped_copy(tmp_path, "bad_test", **change)
    with pytest.raises(CheckpointError, match=message):
        load_model(str(meta), device="cpu")
    shutil.copy(meta, home / "models")
    shutil.copy(tmp_path / "bad_test.pth", home / "models")
    with pytest.warns(UserWarning, match="bad_test.json"):
        assert "litemedsam_clicks" in [spec.name for spec in list_models()]


def test_plain_weights_by_path_are_told_how_to_load(tmp_path, default_model):
    torch.save(default_model.sam.state_dict(), tmp_path / "plain_medsam.pth")
    with pytest.raises(WeightsNotAvailableError, match="checkpoint='.*plain_medsam.pth'"):
        load_model(str(tmp_path / "plain_medsam.pth"), device="cpu")


def test_a_decoder_made_over_other_base_weights_says_so(home, tmp_path):
    meta = _shipped_copy(tmp_path, "other_base", base_weights_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="was trained over other litemedsam weights") as error:
        load_model(str(meta), device="cpu")
    assert "delete" not in str(error.value)    # the bundled base file is fine: it must not be deleted


def test_a_decoder_over_absent_base_weights_names_them(home, tmp_path):
    meta = _shipped_copy(tmp_path, "over_sam", base_model="sam_vit_b", base_weights_sha256=None)
    with pytest.raises(WeightsNotAvailableError, match="sam_vit_b's weights.*sonosam models --download sam_vit_b"):
        load_model(str(meta), device="cpu", download=False)


# ------------------------------------------------------------------------------ A7, A8, D17: prompts, backends

def test_a_mask_alone_is_refused_by_a_decoder_trained_with_masks_beside_prompts(echo_frames):
    model = load_model("litemedsam_slices", device="cpu")
    embedding = model.encode(echo_frames[0])
    box = model.decode(embedding, Prompts(box=LV_BOX))
    with pytest.raises(UnsupportedPromptError, match="mask prompt alone; add a box or a click"):
        model.decode(embedding, Prompts(mask_logits=box.low_res_logits[0]))
    both = model.decode(embedding, Prompts(box=LV_BOX, mask_logits=box.low_res_logits[0]))
    assert both.mask.sum() > 200
    assert get_spec("sam_vit_b").mask_alone             # SAM was trained with a mask alone


def test_backend_names_are_normalised_and_fp16_on_cpu_falls_back(default_model, caplog):
    model = load_model("litemedsam", device="cpu")
    assert model.use_backend(" Eager-BF16 ") == "eager-bf16"
    with caplog.at_level("WARNING", logger="sonosam.backends"):
        assert model.use_backend("eager-fp16") == "eager"
    assert "float16 on CPU" in caplog.text


# --------------------------------------------------------------------- training: A5, A6, C12, C13, D21, B10

def _echo_sample(frame, key):
    mask = np.zeros(frame.shape, bool)
    x0, y0, x1, y1 = LV_BOX
    mask[y0 + 40:y1 - 40, x0 + 30:x1 - 30] = True
    return Sample(frame, mask, "lv", key)


def test_training_runs_eager_and_a_finished_run_resumed_keeps_its_checkpoint(echo_frames, tmp_path):
    from sonosam.train import TrainConfig, train_decoder

    model = load_model("litemedsam", device="cpu", backend="eager-bf16")   # any backend but eager
    samples = [_echo_sample(echo_frames[0], ("echo", 0)), _echo_sample(echo_frames[1], ("echo", 1))]
    config = TrainConfig(epochs=1, batch_size=1, max_corrections=0, max_steps=1, val_samples=1, val_clicks=1,
                         use_cache=False, progress=False)
    out = tmp_path / "run.pth"
    first = train_decoder(model, samples[:1], samples[1:], config, out, name="run_test", log=None)
    assert model.backend == "eager"                  # the trained modules answer, not a graph of the old weights
    assert first.checkpoint == out and first.epochs_run == 1
    again = train_decoder(model, samples[:1], samples[1:], config, out, resume=True, name="run_test", log=None)
    assert again.epochs_run == 0 and again.best == first.best and again.checkpoint == out

    out.with_name("run.pth.resume").write_bytes(out.with_name("run.pth.resume").read_bytes()[:5000])   # truncated
    with pytest.raises(TrainingError, match="run.pth.resume is not a resume file of this run"):
        train_decoder(model, samples[:1], samples[1:], config, out, resume=True, log=None)
    torch.save({105: torch.zeros(1)}, out.with_name("run.pth.resume"))                              # foreign
    with pytest.raises(TrainingError, match="not a resume file"):
        train_decoder(model, samples[:1], samples[1:], config, out, resume=True, log=None)


def test_training_refuses_a_model_with_two_decoders_and_too_little_data(tmp_path):
    from sonosam.train import train_decoder
    from sonosam.train.data import split_by_source

    with pytest.raises(TrainingError, match="second decoder"):
        train_decoder(load_model("litemedsam_boxes", device="cpu"), [], [], output=tmp_path / "b.pth")
    with pytest.raises(TrainingError, match="Cannot split 1 samples"):
        split_by_source([_echo_sample(np.zeros((480, 640), np.uint8), ("a", 0))], 0.2, 0)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", [
    lambda t: ["train", "decoder", "--model", "litemedsam", "--checkpoint", t / "mine.pth", "--data", "colin27",
               "-o", t / "mine.pth", "--overwrite"],
    lambda t: ["train", "decoder", "--model", t / "mine.pth", "--data", "colin27", "-o", t / "mine.pth", "--overwrite"],
    lambda t: ["train", "distill", "--teacher", t / "mine.pth", "--data", "colin27", "-o", t / "mine.pth",
               "--overwrite"],
    lambda t: ["train", "decoder", "--data", "colin27", "-o", t / "litemedsam.pth"],
])
def test_training_commands_never_replace_their_inputs_nor_take_a_built_in_name(home, tmp_path, command, capsys):
    from sonosam.cli import main

    _shipped_copy(tmp_path, "mine")
    before = weights.file_digest(tmp_path / "mine.pth")
    assert main([str(part) for part in command(tmp_path)]) == 2
    said = capsys.readouterr().err
    assert ("is the input" in said or "built-in model's name" in said) and len(said.strip().splitlines()) == 1
    assert weights.file_digest(tmp_path / "mine.pth") == before and not (tmp_path / "litemedsam.pth").exists()


# ---------------------------------------------------------------------------------------- D16: downloads

def test_download_errors_name_the_real_problem(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(np.random.default_rng(0).bytes(3 << 20))
    with pytest.raises(CheckpointError, match="does not match its checksum.*nothing was kept") as error:
        weights.download(source.as_uri(), tmp_path / "dl" / "w.bin", "sha256:" + "0" * 64, progress=False)
    assert ".part" not in str(error.value) and list((tmp_path / "dl").iterdir()) == []
    # a full disk (a file size limit in a child process) is a full disk, not a network problem
    code = ("import resource, signal, sys; from pathlib import Path; "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "from sonosam.models import weights; from sonosam.errors import DataFileError\n"
            "try:\n weights.download(sys.argv[1], Path(sys.argv[2]), None, progress=False)\n"
            "except DataFileError as e:\n print(e)")
    root = str(Path(sonosam.models.__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", code, source.as_uri(), str(tmp_path / "dl" / "full.bin")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": root})
    assert "Not enough space" in done.stdout, done.stdout + done.stderr
