"""The model registry and predictor on the real embedded model and real echo frames."""

import functools
import json
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from sonosam.errors import (CheckpointError, InputImageError, PromptError, SonoSAMError, UnknownModelError,
                            UnsupportedPromptError, WeightsNotAvailableError)
from sonosam.models import get_spec, list_models, load_model, weights
from sonosam.predictor import EmbeddingCache, Predictor
from sonosam.prompts import Prompts

LV_BOX = (300, 70, 440, 270)


def test_registry_lists_families_and_prompt_kinds():
    names = {spec.name for spec in list_models()}
    assert {"litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b"} <= names
    assert get_spec("litemedsam").prompt_kinds == {"box"}
    assert "point" in get_spec("sam_vit_b").prompt_kinds
    with pytest.raises(UnknownModelError, match="known models"):
        get_spec("sam_vit_z")


def test_sam_model_offers_the_model_interface(default_model):
    """What the predictor, workflows and server rely on (models/interface.py), and nothing SAM-specific."""
    from sonosam.models import PromptableModel

    assert isinstance(default_model, PromptableModel)
    assert default_model.slab_depth == 1 and default_model.backend == "eager"


def test_default_model_segments_left_ventricle_from_box(default_model, echo_frames):
    embedding = default_model.encode(echo_frames[0])
    first = default_model.decode(embedding, Prompts(box=LV_BOX))
    second = default_model.decode(embedding, Prompts(box=LV_BOX))
    area = first.mask.sum()
    box_area = (LV_BOX[2] - LV_BOX[0]) * (LV_BOX[3] - LV_BOX[1])
    assert 0.3 * box_area < area < 0.95 * box_area  # neither empty nor the whole box
    ys, xs = np.nonzero(first.mask)
    assert LV_BOX[0] - 5 <= xs.min() and xs.max() <= LV_BOX[2] + 5 and LV_BOX[1] - 5 <= ys.min()
    assert first.score > 0.7
    assert first.masks.shape == (1, 480, 640)  # litemedsam's multimask heads are untrained: one mask
    np.testing.assert_array_equal(first.masks, second.masks)
    np.testing.assert_array_equal(first.low_res_logits, second.low_res_logits)
    # The chamber is dark blood pool: the mask's mean intensity is below the box's.
    x0, y0, x1, y1 = LV_BOX
    assert echo_frames[0][first.mask].mean() < echo_frames[0][y0:y1, x0:x1].mean()


@pytest.fixture(scope="module")
def frame0(default_model, echo_frames):
    """Frame 0's embedding, encoded once for the tests that only decode (the encoder is the slow part)."""
    return default_model.encode(echo_frames[0])


def test_box_only_model_refuses_a_single_click(default_model, frame0):
    embedding = frame0
    with pytest.raises(UnsupportedPromptError, match="boxes only"):
        default_model.decode(embedding, Prompts(points=[(370, 170)], labels=[1]))
    # two clicks on opposite extremes outline the structure: used as a box, and said so
    prediction = default_model.decode(embedding, Prompts(points=[(305, 75), (435, 265)], labels=[1, 1]))
    assert prediction.mask.sum() > 1000 and "box spanned" in prediction.notes[0]
    with pytest.raises(UnsupportedPromptError, match="at least 4 pixels apart in x and in y"):   # one row
        default_model.decode(embedding, Prompts(points=[(305, 170), (435, 170)], labels=[1, 1]))
    # a mask prompt to a model trained without them is used as given, and said so (it was silent)
    fed_back = default_model.decode(embedding, Prompts(box=(305, 75, 435, 265), mask_logits=prediction.logits))
    assert "not trained with mask prompts" in fed_back.notes[-1]


def test_cache_encodes_each_image_once(default_model, echo_frames):
    predictor = Predictor(default_model, cache_mib=64)
    first = predictor.predict(echo_frames[0], box=LV_BOX, key=("loop", 0))
    again = predictor.predict(echo_frames[0], box=(310, 80, 430, 260), key=("loop", 0))
    assert predictor.encoder_calls == 1
    assert predictor.embedding(echo_frames[0], key=("loop", 0)).features is \
        predictor.embedding(echo_frames[0], key=("loop", 0)).features
    by_content = predictor.predict(echo_frames[0], box=LV_BOX)  # no key: the pixels are the key
    predictor.predict(echo_frames[0].copy(), box=LV_BOX)
    assert predictor.encoder_calls == 2
    np.testing.assert_array_equal(first.mask, by_content.mask)
    assert not np.array_equal(first.mask, again.mask)
    # a key given again with an image of another size is refused (the other image's answer came back)
    with pytest.raises(InputImageError, match="names a .* image in the cache"):
        predictor.predict(echo_frames[0][:200, :300], box=(10, 10, 100, 100), key=("loop", 0))
    # keys and windows as a console user writes them: lists and arrays (they raised "unhashable type")
    assert predictor.is_cached(["loop", 0])
    listed = predictor.predict(echo_frames[0], box=LV_BOX, key=["loop", 0], window=[0, 255])
    predictor.predict(echo_frames[0], box=LV_BOX, key=("loop", 0), window=np.array([0.0, 255.0]))
    assert predictor.encoder_calls == 3   # one more encode: the same window, given twice as a list and an array
    assert listed.mask.shape == echo_frames[0].shape[:2]
    from sonosam.zoom import interactive_predictor   # its crops are keyed (key, "crop", crop): a list inside
    assert interactive_predictor(predictor).predict(echo_frames[0], box=LV_BOX, key=["loop", 0]).mask.any()
    for bad in (100, (5, 5), "wide"):
        with pytest.raises(InputImageError, match="window"):
            predictor.predict(echo_frames[0], box=LV_BOX, window=bad)
    with pytest.raises(InputImageError, match="cannot name an image"):
        predictor.predict(echo_frames[0], box=LV_BOX, key={"loop": 0})


def test_prefetch_in_background_then_cancel(default_model, echo_frames):
    predictor = Predictor(default_model, cache_mib=64)
    seen = []
    job = predictor.prefetch([(("loop", t), functools.partial(lambda t: echo_frames[t], t)) for t in range(2)],
                             on_progress=lambda done, total: seen.append((done, total)))
    job.wait(120)
    assert seen == [(1, 2), (2, 2)] and predictor.encoder_calls == 2
    predictor.predict(echo_frames[1], box=LV_BOX, key=("loop", 1))
    assert predictor.encoder_calls == 2  # ready before the user arrived
    job = predictor.prefetch([(("loop", t), echo_frames[t]) for t in range(2, 4)])
    job.cancel()
    job.wait(120)
    assert predictor.encoder_calls <= 3  # stopped after at most the image under way


def test_cache_respects_budget(default_model, echo_frames):
    cache = EmbeddingCache(budget_mib=9)  # 4 MiB per LiteMedSAM embedding: room for two
    embedding = default_model.encode(echo_frames[0])
    for index in range(5):
        cache.put(index, embedding)
    assert len(cache) == 2 and cache.nbytes <= 9 * 2**20 and 4 in cache and 0 not in cache


@pytest.mark.parametrize("image, message", [
    (np.zeros((0, 0)), "too small|shape"),
    (np.full((64, 64), 7, np.uint8), "constant"),
    (np.where(np.eye(64) > 0, np.nan, 1.0), "NaN"),
    (np.full((64, 64), np.inf), "NaN/Inf"),
    (np.zeros((2, 3, 64, 64)), "shape"),
    (np.zeros((64, 64), bool), "dtype"),
])
def test_bad_images_raise_clear_errors(default_model, image, message):
    with pytest.raises(InputImageError, match=message):
        default_model.encode(image)


@pytest.mark.slow  # a second model load / three more encodes
def test_16bit_and_rgb_images_are_accepted(default_model, echo_frames):
    gray = echo_frames[0]
    as16 = gray.astype(np.uint16) * 257  # same picture, 16-bit range
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    masks = [default_model.decode(default_model.encode(image), Prompts(box=LV_BOX)).mask
             for image in (gray, as16, rgb)]
    for mask in masks[1:]:
        assert (mask & masks[0]).sum() / (mask | masks[0]).sum() > 0.9


@pytest.mark.parametrize("prompts, message", [
    (dict(points=[(700, 10)], labels=[1]), "outside the 640x480 image"),
    (dict(box=(600, 10, 700, 50)), "outside"),
    (dict(box=(400, 10, 300, 50)), "x0 < x1"),
    (dict(points=[(10, 10)], labels=[2]), "label"),
    (dict(), "No prompt"),
    (dict(box=(np.nan, 0, 10, 10)), "finite"),
])
def test_bad_prompts_raise_clear_errors(default_model, frame0, prompts, message):
    embedding = frame0
    with pytest.raises(PromptError, match=message):
        default_model.decode(embedding, Prompts(**prompts))


@pytest.mark.slow  # a second model load / three more encodes
def test_embedding_from_another_model_is_refused(default_model, echo_frames, tmp_path):
    other = load_model("litemedsam", checkpoint=_copy(weights_path_of(default_model), tmp_path / "copy.pth"))
    with pytest.raises(SonoSAMError, match="encode the image again"):
        other.decode(default_model.encode(echo_frames[0]), Prompts(box=LV_BOX))


def weights_path_of(model):
    return Path(model.checkpoint)


def _copy(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


# --- checkpoints: wrong, truncated, unsafe, missing, downloaded ---------------------------------

def test_checkpoint_of_wrong_architecture(default_model):
    with pytest.raises(CheckpointError, match="does not fit the sam_vit_b architecture"):
        load_model("sam_vit_b", checkpoint=default_model.checkpoint)


def test_truncated_checkpoint(default_model, tmp_path):
    truncated = tmp_path / "lite_medsam.pth"
    truncated.write_bytes(Path(default_model.checkpoint).read_bytes()[: 10_000_000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model("litemedsam", checkpoint=truncated)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious pickle does: run code on load
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_carries_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "extra": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="could run code"):
        load_model("litemedsam", checkpoint=evil)
    assert not marker.exists()


def test_missing_weights_offline_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("SONOSAM_HOME", str(tmp_path))
    with pytest.raises(WeightsNotAvailableError, match=str(tmp_path / "weights")):
        load_model("sam_vit_b", download=False)
    with pytest.raises(WeightsNotAvailableError, match="checkpoint=PATH"):
        load_model("medsam_vit_b")


def test_weights_put_in_the_cache_by_hand_are_checked(tmp_path, monkeypatch):
    """The "No weights" message says where to put the file; a wrong file put there is named, not loaded."""
    monkeypatch.setenv("SONOSAM_HOME", str(tmp_path))
    cached = tmp_path / "weights" / get_spec("sam_vit_b").filename
    cached.parent.mkdir()
    cached.write_bytes(b"PK\x03\x04 an unofficial file under the official name")
    with pytest.raises(CheckpointError, match=r"not the official file of this model \(md5 is .*checkpoint=PATH"):
        load_model("sam_vit_b", download=False)


def test_a_cached_file_is_hashed_once_and_again_when_it_changes(tmp_path, monkeypatch):
    cached = tmp_path / "w.pth"
    cached.write_bytes(b"official bytes")
    expected = "sha256:" + weights.file_digest(cached)
    weights.verify_cached(cached, expected)
    record = tmp_path / "w.pth.verified"
    assert json.loads(record.read_text())["digest"] == expected
    monkeypatch.setattr(weights, "file_digest", lambda *a: pytest.fail("hashed again"))
    weights.verify_cached(cached, expected)           # the record answers: not hashed again
    monkeypatch.undo()
    cached.write_bytes(b"tampered bytes, longer")     # another size: hashed again, refused
    with pytest.raises(CheckpointError, match="not the official file"):
        weights.verify_cached(cached, expected)


@pytest.fixture()
def local_server(default_model):
    """Serves the real LiteMedSAM checkpoint over HTTP on loopback, as a download source."""
    folder = Path(default_model.checkpoint).parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_verifies_and_moves_into_place(local_server, tmp_path):
    spec = get_spec("litemedsam")
    target = tmp_path / "weights" / "lite_medsam.pth"
    weights.download(local_server + "lite_medsam.pth", target, spec.digest, progress=False)
    assert weights.file_digest(target) == spec.digest.split(":")[1]
    assert (tmp_path / "weights" / "lite_medsam.pth.verified").is_file()   # not hashed again on load
    model = load_model("litemedsam", checkpoint=target)
    assert model.spec.name == "litemedsam"


def test_download_with_wrong_checksum_leaves_nothing(local_server, tmp_path):
    target = tmp_path / "weights" / "lite_medsam.pth"
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        weights.download(local_server + "lite_medsam.pth", target, "sha256:" + "0" * 64, progress=False)
    assert list(target.parent.iterdir()) == []


def test_download_offline_is_a_clear_error(tmp_path):
    target = tmp_path / "weights" / "x.pth"
    with pytest.raises(WeightsNotAvailableError, match="put it at"):
        weights.download("http://127.0.0.1:9/x.pth", target, None, progress=False)
    assert list(target.parent.iterdir()) == []


def test_download_into_a_folder_it_cannot_make_is_one_line(tmp_path):
    """SONOSAM_HOME on a read-only path or under a file: a one-line error, not mkdir's traceback."""
    from sonosam.errors import DataFileError

    (tmp_path / "home").write_text("a file, not a folder")
    with pytest.raises(DataFileError, match="nothing was written"):
        weights.download("http://127.0.0.1:9/x.pth", tmp_path / "home" / "weights" / "x.pth", None, progress=False)


@pytest.mark.slow  # SAM ViT-B at 1024 px against segment_anything
def test_sam_vit_b_matches_segment_anything_predictor(tmp_path, echo_frames):
    """Our sam_vit_b path against the official SamPredictor, same real-architecture checkpoint."""
    from segment_anything import SamPredictor, sam_model_registry

    torch.manual_seed(0)
    reference = sam_model_registry["vit_b"](checkpoint=None).eval()
    checkpoint = tmp_path / "random_vit_b.pth"
    torch.save(reference.state_dict(), checkpoint)

    ours = load_model("sam_vit_b", checkpoint=checkpoint, device="cpu")
    image = echo_frames[0][::2, ::2]  # 240x320: a smaller real image keeps the test quick
    rgb = np.repeat(image[..., None], 3, axis=-1)
    official = SamPredictor(reference)
    official.set_image(rgb)
    embedding = ours.encode(image)
    torch.testing.assert_close(embedding.features, official.features)
    for prompts in (dict(point_coords=np.array([[180.0, 80.0], [120.0, 60.0]]), point_labels=np.array([1, 0])),
                    dict(box=np.array([150, 35, 220, 135]))):
        masks, scores, logits = official.predict(**prompts, multimask_output=True)
        ours_prediction = ours.decode(embedding, Prompts(prompts.get("point_coords"), prompts.get("point_labels"),
                                                         prompts.get("box")), multimask=True)
        order = np.argsort(-scores)
        np.testing.assert_array_equal(ours_prediction.masks, masks[order])
        np.testing.assert_allclose(ours_prediction.scores, scores[order], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours_prediction.low_res_logits, logits[order], rtol=1e-4, atol=1e-4)
