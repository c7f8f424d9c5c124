"""Fixtures shared by every suite: the real default model and real echo frames, loaded once."""

import numpy as np
import pytest
import torch

torch.set_num_threads(2)  # CI has 2 cores


@pytest.fixture(scope="session")
def default_model():
    from sonosam.models import load_model

    return load_model("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def echo_frames():
    """First 4 frames of the real apical 4-chamber loop as grayscale uint8 (4, 480, 640)."""
    import pydicom

    from sonosam.data import echo_a4c_path

    rgb = pydicom.dcmread(echo_a4c_path()).pixel_array[:4]
    return np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)


# Box around the left ventricle in frame 0 of the A4C loop (x0, y0, x1, y1), checked by eye on an overlay.
LV_BOX = (300, 70, 440, 270)


@pytest.fixture(scope="session")
def colin_stack():
    """Real Colin27 axial slices 72-79 (float32, (8, 217, 181)) with their AAL labels and the volume window:
    Thalamus_L (77) is on every one of them."""
    from sonosam.seeds_data import colin27

    volume, labels, window, _ = colin27()
    return np.ascontiguousarray(volume[72:80], np.float32), np.ascontiguousarray(labels[72:80]), window


@pytest.fixture(scope="session")
def brief_ppn(default_model, colin_stack, tmp_path_factory):
    """A real prompt predictor (sonosam.ppn) for Thalamus_L and Putamen_R over `litemedsam`, trained for 3
    steps on two real Colin27 slices and saved: it exercises the machinery, its accuracy is not the point."""
    from sonosam.ppn import save_ppn, train_ppn

    stack, labels, window = colin_stack
    ppn, _ = train_ppn(default_model, [stack[2], stack[6]], [labels[2], labels[6]], {"Thalamus_L": 77, "Putamen_R": 74},
                       steps=3, batch=2, window=window, seed=0)
    return save_ppn(ppn, tmp_path_factory.mktemp("ppn") / "thalamus.ppn.pt")
