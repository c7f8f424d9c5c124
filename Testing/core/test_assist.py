"""SAM^assist on the real Colin27 MRI with the real LiteMedSAM weights: only the prompt encoder learns."""

import numpy as np
import pytest
import torch

from sonosam.assist import save_assist, train_assist
from sonosam.errors import SonoSAMError
from sonosam.evaluate.metrics import dice
from sonosam.prompts import Prompts

PUTAMEN_L = 73


@pytest.fixture(scope="module")
def putamen():
    from sonosam.seeds_data import assist_slices, colin27

    volume, labels, window, _ = colin27()
    train, test = assist_slices(labels, PUTAMEN_L, 2)
    return volume, labels, window, train, test


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_only_the_prompt_encoder_learns(default_model, putamen, tmp_path):
    volume, labels, window, train, test = putamen
    sam = default_model.sam
    before = {name: _state(getattr(sam, name)) for name in ("image_encoder", "prompt_encoder", "mask_decoder")}
    result = train_assist(default_model, [volume[i] for i in train], [labels[i] == PUTAMEN_L for i in train],
                          kinds=("point",), steps=12, window=window, seed=0)
    print(f"SAM^assist: {result.seconds:.1f} s for 12 steps on 2 slices, {result.trained_parameters} parameters")
    assert result.trained_parameters == sum(p.numel() for p in sam.prompt_encoder.parameters())
    # the base model is untouched, the assisted one shares its frozen parts
    for name, state in before.items():
        for key, value in _state(getattr(sam, name)).items():
            assert torch.equal(value, state[key]), f"base {name}.{key} changed"
    assisted = result.model.sam
    assert assisted.image_encoder is sam.image_encoder and assisted.mask_decoder is sam.mask_decoder
    changed = [k for k, v in _state(assisted.prompt_encoder).items() if not torch.equal(v, before["prompt_encoder"][k])]
    assert any(k.startswith("point_embeddings") for k in changed), changed
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3])
    assert "point" in result.model.spec.prompt_kinds

    # a click now means something to the box-only LiteMedSAM, on a slice it was not trained on
    index = test[len(test) // 2]
    gt = labels[index] == PUTAMEN_L
    rows, cols = np.nonzero(gt)
    click = [(int(np.median(cols)), int(np.median(rows)))]
    if not gt[click[0][1], click[0][0]]:
        click = [(int(cols[len(cols) // 2]), int(rows[len(rows) // 2]))]
    embedding = default_model.encode(volume[index], window)
    with torch.inference_mode():
        from sonosam.train.finetune import clickable

        base_mask = clickable(default_model, mask=False).decode(embedding, Prompts(points=click, labels=[1]), multimask=False).mask
        assisted_mask = result.model.decode(embedding, Prompts(points=click, labels=[1]), multimask=False).mask
    assert dice(assisted_mask, gt) > dice(base_mask, gt) + 0.1

    # saved over the base weights and loaded by path: the same prompt encoder
    path, meta = save_assist(result, tmp_path / "putamen_assist.pth")
    from sonosam.models import load_model

    loaded = load_model(str(path), device="cpu")
    for key, value in _state(result.model.sam.prompt_encoder).items():
        assert torch.equal(loaded.sam.prompt_encoder.state_dict()[key], value)


def test_bad_input_is_refused(default_model):
    image = np.zeros((64, 64), np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:40] = True
    with pytest.raises(SonoSAMError, match="non-empty mask"):
        train_assist(default_model, [image] * 2, [mask, np.zeros((64, 64), bool)], steps=1)
    with pytest.raises(SonoSAMError, match="kinds"):
        train_assist(default_model, [image] * 2, [mask] * 2, kinds=("mask",), steps=1)
    for n in (1, 6):   # 2-5 slices, as the help and learn_assist say (1 was trained on)
        with pytest.raises(SonoSAMError, match="2-5"):
            train_assist(default_model, [image] * n, [mask] * n, steps=1)


def test_masks_off_the_images_grid_are_refused_before_any_encoding(default_model):
    """A transposed or resized mask would train on misplaced targets (it was trained on, as if nothing were
    wrong); train_assist and learn_assist (the Slicer logic's and the server's call) refuse it."""
    from sonosam.assist import check_kinds, learn_assist
    from sonosam.errors import InputImageError
    from sonosam.predictor import Predictor

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 64)).astype(np.uint8) for _ in range(2)]
    mask = np.zeros((40, 64), bool)
    mask[10:30, 20:40] = True
    for wrong in (mask.T, mask[:20], np.zeros((40, 40), bool) | True):
        with pytest.raises(InputImageError, match="image's grid"):
            train_assist(default_model, images, [mask, wrong], steps=1)
    predictor = Predictor(default_model)
    with pytest.raises(InputImageError, match="image's grid"):
        learn_assist(predictor, np.stack(images), [0, 1], [mask, mask.T], steps=1)
    assert predictor.encoder_calls == 0
    assert check_kinds("box") == ("box",)   # one kind as a string, not ['b', 'o', 'x']


def test_save_assist_replaces_nothing_without_overwrite(default_model, tmp_path):
    from sonosam.errors import DataFileError

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (64, 64)).astype(np.uint8) for _ in range(2)]
    mask = np.zeros((64, 64), bool)
    mask[20:40, 20:44] = True
    result = train_assist(default_model, images, [mask, mask], kinds=("box",), steps=1)
    path = tmp_path / "a.pth"
    path.write_bytes(b"precious")
    with pytest.raises(DataFileError, match="already exists"):
        save_assist(result, path)
    assert path.read_bytes() == b"precious" and not path.with_suffix(".json").exists()
    path.unlink()
    path.with_suffix(".json").write_text("{}")   # the metadata alone is not replaced either
    with pytest.raises(DataFileError, match="already exists"):
        save_assist(result, path)
    assert not path.exists()
    written, meta = save_assist(result, path, overwrite=True)
    assert written.stat().st_size > 0 and meta.read_text() != "{}"


@pytest.mark.slow
def test_snapshots_are_the_shorter_runs(default_model, putamen):
    """``snapshots=``: the model after n steps of a longer run is the model of an n-step run with the same seed
    (what bench.seeds assist relies on to compare step counts in one run)."""
    volume, labels, window, train, _ = putamen
    images, masks = [volume[i] for i in train], [labels[i] == PUTAMEN_L for i in train]
    embeddings = [default_model.encode(image, window).features for image in images]
    long = train_assist(default_model, images, masks, steps=6, seed=1, embeddings=embeddings, snapshots=(3,))
    short = train_assist(default_model, images, masks, steps=3, seed=1, embeddings=embeddings)
    assert sorted(long.snapshots) == [3, 6] and long.snapshots[6] is long.model and long.cpu_seconds > 0
    for key, value in _state(short.model.sam.prompt_encoder).items():
        assert torch.equal(long.snapshots[3].sam.prompt_encoder.state_dict()[key], value), key
    assert not all(torch.equal(v, long.model.sam.prompt_encoder.state_dict()[k])
                   for k, v in _state(short.model.sam.prompt_encoder).items())
