"""The `sonosam` command line on the real echo loop: files written, errors clear, nothing overwritten."""

import numpy as np
import pytest
import slicerio

from sonosam.cli import main
from sonosam.data import echo_a4c_path
from sonosam.io import read_segmentation

pytestmark = pytest.mark.slow  # each command loads the real model


def test_segment_cine_frame_writes_mask_and_overlay(tmp_path, capsys):
    output = tmp_path / "lv.seg.nrrd"
    assert main(["segment", str(echo_a4c_path()), "--frame", "0", "--box", "300,70,440,270", "-o", str(output)]) == 0
    assert "predicted IoU" in capsys.readouterr().out
    segmentation = slicerio.read_segmentation(str(output))
    mask = segmentation["voxels"]
    assert mask.shape[:2] == (640, 480) or mask.shape[-2:] == (480, 640)  # slicerio returns [i, j, k]
    assert 5000 < (mask > 0).sum() < 25000
    ours = read_segmentation(output)
    assert np.isclose(ours.geometry.spacing[0], 0.5105, atol=1e-3)  # mm, from the ultrasound region
    assert (tmp_path / "lv_overlay.png").stat().st_size > 10000


def test_segment_answers_the_click_models_box_at_its_scales(tmp_path):
    from pathlib import Path

    from sonosam.cli.images import load_image
    from sonosam.models import load_model
    from sonosam.predictor import Predictor
    from sonosam.zoom import interactive_predictor

    output = tmp_path / "lv.png"
    assert main(["segment", str(echo_a4c_path()), "--model", "litemedsam_clicks", "--box", "300,70,440,270",
                 "-o", str(output)]) == 0
    written = read_segmentation(output).labelmap.squeeze() > 0
    image = load_image(Path(echo_a4c_path()), None, "k")[0]
    want = interactive_predictor(Predictor(load_model("litemedsam_clicks"))).predict(image, box=(300, 70, 440, 270))
    assert written.shape == want.mask.shape and np.array_equal(written, want.mask) and want.mask.sum() > 5000


def test_segment_volume_slice_fills_only_that_slice(tmp_path):
    pytest.importorskip("SimpleITK")
    from sonosam.data import mri_colin27_paths

    try:
        t1, _ = mri_colin27_paths()
    except Exception as error:  # noqa: BLE001 - data missing: say so
        pytest.skip(str(error))
    output = tmp_path / "slice.nii.gz"
    assert main(["segment", str(t1), "--slice", "90", "--axis", "j", "--box", "60,40,120,100", "-o", str(output)]) == 0
    labels = read_segmentation(output).labelmap
    assert labels.shape == (181, 217, 181)
    filled = np.nonzero(labels.any(axis=(0, 2)))[0]
    assert filled.tolist() == [90]


def test_errors_are_one_line_and_leave_no_file(tmp_path, capsys):
    output = tmp_path / "out.png"
    code = main(["segment", str(echo_a4c_path()), "--box", "600,10,700,50", "-o", str(output)])
    assert code == 2 and "outside the 640x480 image" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    code = main(["segment", str(echo_a4c_path()), "--point", "370,170", "-o", str(output)])
    assert code == 2 and "boxes only" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    code = main(["segment", str(echo_a4c_path()), "--frame", "500", "--box", "1,1,9,9", "-o", str(output)])
    assert code == 2 and "outside 0..119" in capsys.readouterr().err


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    output = tmp_path / "mine.png"
    output.write_bytes(b"precious")
    code = main(["segment", str(echo_a4c_path()), "--box", "300,70,440,270", "-o", str(output)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert output.read_bytes() == b"precious"


def test_models_lists_the_embedded_default(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "litemedsam" in out and "lite_medsam.pth" in out and "sam_vit_b" in out


def test_segment_writes_the_seed_checks_suggestion_for_a_box_and_any_choice_asked(tmp_path, capsys):
    """A loose box on Colin27's left lateral ventricle: the seed check (through the same route as the answer) suggests
    the box's dark part, and `segment` writes it, as the Slicer effect previews it; --no-seed-check writes the model's
    answer, --seed-choice N the check's mask N, and a choice it does not offer is refused before anything is written."""
    from bench.volume import loose_box
    from sonosam.cli.images import load_image
    from sonosam.data import mri_colin27_paths
    from sonosam.evaluate.metrics import dice
    from sonosam.models import load_model
    from sonosam.predictor import Predictor
    from sonosam.references import colin27_references
    from sonosam.seed_check import check_seed
    from sonosam.zoom import interactive_predictor

    t1, _ = mri_colin27_paths()
    ventricle = colin27_references(aal=False).references["Lateral_Ventricle_L"].mask
    index = int(np.argmax(ventricle.sum(axis=(1, 2))))
    box = loose_box(ventricle[index])
    image = load_image(t1, index, "k")[0]
    route = interactive_predictor(Predictor(load_model("litemedsam")))
    check = check_seed(route, image, box=box)
    assert check.best, check.summary()
    args = ["segment", str(t1), "--slice", str(index), "--box", ",".join(str(v) for v in box)]

    def written(name, *more):
        out = tmp_path / name
        assert main(args + list(more) + ["-o", str(out)]) == 0
        return read_segmentation(out).labelmap[index] > 0, capsys.readouterr().out

    mask, said = written("suggested.nii.gz")
    assert np.array_equal(mask, check.candidates[check.best].mask)
    assert f"wrote choice {check.best}, {check.candidates[check.best].source}" in said and "seed check:" in said
    assert dice(mask, ventricle[index]) > 0.8
    model, said = written("model.nii.gz", "--no-seed-check")
    assert np.array_equal(model, route.predict(image, box=box).mask) and "seed check" not in said
    assert dice(model, ventricle[index]) < dice(mask, ventricle[index])
    chosen, _ = written("zero.nii.gz", "--seed-choice", "0")
    assert np.array_equal(chosen, model)
    refused = tmp_path / "refused.nii.gz"
    assert main(args + ["--seed-choice", str(len(check.candidates)), "-o", str(refused)]) == 2
    assert "the seed check offers" in capsys.readouterr().err and not refused.exists()
