"""Hostile input through the Python API (what a researcher scripts in the Slicer console): every call answers
or raises a SonoSAMError whose one-line message names the argument; never a bare TypeError/ValueError."""

from __future__ import annotations

import numpy as np
import pytest

from sonosam.errors import CheckpointError, DeviceError, InputImageError, PromptError, SonoSAMError, UnknownModelError

from . import corpus

IMAGE = corpus.textured(96, 128)
BOX = (30, 20, 90, 70)


@pytest.fixture(scope="module")
def predictor(default_model):
    from sonosam.predictor import Predictor

    predictor = Predictor(default_model)
    predictor.embedding(IMAGE, key="api")
    yield predictor
    predictor.close()


# (id, error class, words, keyword arguments of predictor.predict)
PREDICT_CASES = [
    ("image-none", InputImageError, ["image"], dict(image=None, box=BOX)),
    ("image-nan", InputImageError, ["nan"], dict(image=np.full((64, 64), np.nan), box=BOX)),
    ("image-objects", InputImageError, ["dtype"], dict(image=np.array([[object()] * 9] * 9), box=BOX)),
    ("image-8x6000", InputImageError, ["elongated"], dict(image=corpus.textured(8, 6000), box=BOX)),
    ("image-3d", InputImageError, ["2d slice"], dict(image=np.zeros((4, 64, 64, 5)), box=BOX)),
    ("box-string", PromptError, ["box"], dict(box="30,20,90,70")),
    ("box-nan", PromptError, ["box"], dict(box=(np.nan, 1, 20, 20))),
    ("box-inverted", PromptError, ["box"], dict(box=(90, 70, 30, 20))),
    ("box-outside", PromptError, ["outside"], dict(box=(100, 20, 200, 70))),
    ("points-triples", PromptError, ["point"], dict(points=[(40, 40, 1)], labels=[1])),
    ("labels-mismatch", PromptError, ["label"], dict(box=BOX, points=[(40, 40)], labels=[1, 0])),
    ("label-7", PromptError, ["label"], dict(box=BOX, points=[(40, 40)], labels=[7])),
    ("mask-64", PromptError, ["mask"], dict(box=BOX, mask_logits=np.zeros((64, 64), np.float32))),
    ("mask-512", PromptError, ["mask"], dict(box=BOX, mask_logits=np.zeros((512, 512), np.float32))),
    ("mask-nan", PromptError, ["mask"], dict(box=BOX, mask_logits=np.full((256, 256), np.nan, np.float32))),
    ("clicks-on-box-model", PromptError, ["boxes only"], dict(points=[(40, 40)], labels=[1])),
    ("nothing", PromptError, ["prompt"], dict()),
]


@pytest.mark.parametrize("name, error, words, kwargs", PREDICT_CASES, ids=[c[0] for c in PREDICT_CASES])
def test_predict_refuses_by_name(predictor, name, error, words, kwargs):
    kwargs = dict(kwargs)
    image = kwargs.pop("image", IMAGE)
    with pytest.raises(error) as caught:
        predictor.predict(image, **kwargs)
    message = str(caught.value)
    assert message.strip() and "\n" not in message.strip()
    for word in words:
        assert word.lower() in message.lower(), message


def test_predict_still_answers_after_refusals(predictor):
    assert predictor.predict(IMAGE, box=BOX, key="api").mask.shape == IMAGE.shape


def test_load_model_refuses_by_name(tmp_path):
    from sonosam.models import load_model

    with pytest.raises(UnknownModelError, match="Unknown model"):
        load_model("no_such_model")
    (tmp_path / "w.pth").write_bytes(bytes(range(9, 250)) * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model("litemedsam", checkpoint=tmp_path / "w.pth", device="cpu")
    with pytest.raises(DeviceError, match="not one SonoSAM knows"):
        load_model("litemedsam", device="gpu0")


def test_a_device_this_machine_lacks_is_refused_before_weights_are_read():
    import torch

    from sonosam.devices import resolve_device

    if torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(DeviceError, match="available here: cpu"):
            resolve_device("cuda")
    assert str(resolve_device("cpu")) == "cpu"


def test_reader_functions_refuse_by_name(tmp_path):
    from sonosam import io

    (tmp_path / "x.dcm").write_bytes(b"")
    for call in (lambda: io.read_volume(tmp_path / "nope.nii.gz"), lambda: io.read_cine(tmp_path / "x.dcm"),
                 lambda: io.read_segmentation(tmp_path / "nope.seg.nrrd"), lambda: io.read_npy(tmp_path / "x.dcm"),
                 lambda: io.Geometry((0, 1, 1)), lambda: io.Volume(np.zeros((3, 3))),
                 lambda: io.write_segmentation(tmp_path / "s.seg.nrrd", np.ones((2, 3, 4), np.uint8), None,
                                               [{"name": "a\nb"}])):
        with pytest.raises(SonoSAMError) as caught:
            call()
        assert "\n" not in str(caught.value).strip()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.dcm"]
