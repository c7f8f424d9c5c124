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
