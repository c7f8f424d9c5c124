"""Inference backends against eager PyTorch on real images, their artefact cache, fallbacks, and the disk spill."""

import json
import logging
import sys

import numpy as np
import pytest
import torch

from bench.models import real_test_images
from sonosam.evaluate.metrics import iou as mask_iou
from sonosam.models import backends, load_model
from sonosam.predictor import EmbeddingCache
from sonosam.prompts import Prompts

pytestmark = pytest.mark.slow  # exports ONNX graphs and encodes real images with several backends

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def artefact_home(tmp_path_factory):
    """A private $SONOSAM_HOME: artefacts are exported once for this module, never taken from the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("sonosam-home")
        patch.setenv("SONOSAM_HOME", str(home))
        yield home / "onnx"


@pytest.fixture(scope="module")
def images():
    return real_test_images()  # [(name, image, box)]: the real echo frame 0 (LV box) and a real MRI slice


@pytest.fixture(scope="module")
def onnx_model(artefact_home):
    before = dict(backends.EXPORTS)
    model = load_model("litemedsam", device="cpu", backend="onnx")
    assert model.backend == "onnx"
    assert backends.EXPORTS.get("encoder", 0) == before.get("encoder", 0) + 1
    assert backends.EXPORTS.get("decoder", 0) == before.get("decoder", 0) + 1
    return model


@pytest.fixture(scope="module")
def eager_reference(default_model, images):
    return {name: default_model.decode(default_model.encode(image), Prompts(box=box)) for name, image, box in images}


@pytest.mark.parametrize("backend", ["onnx", "onnx-decoder"])
def test_backend_masks_match_eager_on_echo_and_mri(backend, onnx_model, default_model, images, eager_reference):
    model = onnx_model if backend == "onnx" else load_model("litemedsam", device="cpu", backend=backend)
    assert model.backend == backend
    for name, image, box in images:
        prediction = model.decode(model.encode(image), Prompts(box=box))
        reference = eager_reference[name]
        iou = mask_iou(prediction.mask, reference.mask)
        assert iou >= 0.98, f"{backend} on {name}: IoU {iou:.4f} vs eager"
        assert reference.mask.sum() > 200  # a real structure, not two empty masks agreeing
        assert abs(prediction.score - reference.score) < 0.02
        # refinement with the previous logits as a mask prompt goes through the same graph
        embedding = model.encode(image)
        refined = model.decode(embedding, Prompts(box=box, mask_logits=reference.logits))
        expected = default_model.decode(default_model.encode(image), Prompts(box=box, mask_logits=reference.logits))
        assert mask_iou(refined.mask, expected.mask) >= 0.98


def test_onnx_decoder_handles_points_padding_and_multimask(onnx_model, default_model, images):
    """The decoder graph beyond LiteMedSAM's box-only rules: clicks (padded as eager pads them), clicks with a box,
    and the multimask heads, compared on low-res logits with eager's prompt encoder + mask decoder."""
    sam, image = default_model.sam, images[0][1]
    embedding = default_model.encode(image)
    coords = torch.tensor([[[180.0, 60.0], [150.0, 100.0]]])
    labels = torch.tensor([[1, 0]], dtype=torch.int)
    box = torch.tensor([[160.0, 37.0, 235.0, 144.0]])
    for point_input, box_input in [((coords, labels), None), ((coords, labels), box), (None, box)]:
        for multimask in (True, False):
            with torch.inference_mode():
                sparse, dense = sam.prompt_encoder(points=point_input, boxes=box_input, masks=None)
                expected, expected_iou = sam.mask_decoder(
                    image_embeddings=embedding.features, image_pe=sam.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
            got, got_iou = onnx_model._backend.decode(onnx_model, embedding.features,
                                                      *(point_input or (None, None)), box_input, None, multimask)
            assert got.shape == expected.shape
            np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-3)
            np.testing.assert_allclose(got_iou.numpy(), expected_iou.numpy(), atol=1e-3)
    # a mask prompt alone has an empty sparse embedding, which the graph cannot take: the backend answers
    # with its eager code (no None meaning "fall back"), the same numbers as the eager model
    mask_input = torch.zeros(1, 1, 256, 256)
    with torch.inference_mode():  # as SamModel.decode calls backends
        got, got_iou = onnx_model._backend.decode(onnx_model, embedding.features, None, None, None, mask_input, False)
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=mask_input)
        expected, expected_iou = sam.mask_decoder(
            image_embeddings=embedding.features, image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(got_iou.numpy(), expected_iou.numpy(), atol=1e-5)


def test_artefacts_are_reused_and_a_corrupt_one_is_rebuilt(onnx_model, artefact_home, images):
    files = sorted(artefact_home.glob("litemedsam-decoder-*.onnx")) + sorted(artefact_home.glob("encoder-*.onnx"))
    assert len(files) == 2   # the encoder's is keyed by its weights alone (shared by the models over this encoder)
    for path in files:  # each with its record: versions, weights fingerprint, file sha256
        record = json.loads(path.with_suffix(".json").read_text())
        assert record["torch"] == torch.__version__ and len(record["weights_sha256"]) == 64
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    exports = dict(backends.EXPORTS)
    again = load_model("litemedsam", device="cpu", backend="onnx")
    assert again.backend == "onnx" and backends.EXPORTS == exports  # nothing exported again
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    # a decoder trained over this encoder shares its encoder artefact (it was exported again, per model name)
    clicks = load_model("litemedsam_clicks", device="cpu")
    assert backends.artefact_key(clicks, "encoder")[0] == backends.artefact_key(again, "encoder")[0]

    decoder = next(f for f in files if "-decoder-" in f.name)
    data = bytearray(decoder.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\0" * 64  # corrupt in place, same size
    decoder.write_bytes(bytes(data))
    rebuilt = load_model("litemedsam", device="cpu", backend="onnx-decoder")
    assert rebuilt.backend == "onnx-decoder"
    assert backends.EXPORTS["decoder"] == exports["decoder"] + 1
    record = json.loads(decoder.with_suffix(".json").read_text())
    from sonosam.models.weights import file_digest
    assert file_digest(decoder) == record["onnx_sha256"]
    name, image, box = images[0]
    assert rebuilt.decode(rebuilt.encode(image), Prompts(box=box)).mask.sum() > 200

    decoder.with_suffix(".json").write_text("{not json")  # a broken record is not trusted either
    load_model("litemedsam", device="cpu", backend="onnx-decoder")
    assert backends.EXPORTS["decoder"] == exports["decoder"] + 2


def test_missing_onnxruntime_falls_back_to_eager(default_model, monkeypatch, caplog, images):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    model = load_model("litemedsam", device="cpu", backend="onnx")
    with caplog.at_level(logging.INFO, logger="sonosam.backends"):
        assert model.use_backend("onnx") == "eager"
        assert model.use_backend("auto") == "eager"
    assert "onnxruntime" in caplog.text and model.backend == "eager"
    name, image, box = images[0]
    np.testing.assert_array_equal(model.decode(model.encode(image), Prompts(box=box)).mask,
                                  default_model.decode(default_model.encode(image), Prompts(box=box)).mask)
    with pytest.raises(ValueError, match="Unknown backend"):
        model.use_backend("tensorrt-magic")


def test_cache_spills_to_disk_in_fp16(default_model, images):
    name, image, box = images[0]
    embedding = default_model.encode(image)
    cache = EmbeddingCache(budget_mib=5, spill=True)  # room for one 4 MiB embedding in memory
    for key in range(3):
        cache.put(key, embedding)
    assert len(cache) == 1 and cache.spilled == 2 and cache.nbytes <= 5 * 2**20
    assert 0 in cache and 1 in cache
    back = cache.get(0)
    assert back.features.dtype == torch.float32 and back.features.shape == embedding.features.shape
    assert torch.allclose(back.features, embedding.features, atol=1e-2, rtol=1e-3)
    assert len(cache) == 1 and cache.spilled == 2  # 0 came back to memory, 2 went to disk
    iou = mask_iou(default_model.decode(back, Prompts(box=box)).mask,
                   default_model.decode(embedding, Prompts(box=box)).mask)
    assert iou >= 0.98
    cache.clear()
    assert cache.spilled == 0 and 0 not in cache
