"""Fixtures for the Slicer-logic tests: a headless MRML scene from `slicer-core` (skipped when it is
not installed) and the extension's module folders on sys.path."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for folder in (HERE, ROOT / "SonoSAMSegment", ROOT / "SonoSAMTrack", ROOT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture
def mrml():
    """A fresh headless Slicer context per test: ``mrml.scene``, ``mrml.app_logic``, ``mrml.logic(name)``."""
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    from mrml_scene import make_scene

    ctx = make_scene()
    yield ctx
    ctx.close()
