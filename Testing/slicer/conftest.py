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


def _import_slicer_core():
    """Import slicer-core's ``slicer`` package with Testing/ off sys.path: its ``__init__`` extends the
    package path with every ``slicer/`` folder on sys.path and imports each module there, so this folder
    (Testing/slicer, on sys.path through Testing/conftest.py) would be imported as part of ``slicer``."""
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent]
    try:
        import slicer  # noqa: F401
    except ImportError:  # not installed: the tests skip themselves
        pass
    finally:
        sys.path[:] = saved


_import_slicer_core()


@pytest.fixture
def mrml():
    """A fresh headless Slicer context per test: ``mrml.scene``, ``mrml.app_logic``, ``mrml.logic(name)``."""
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    from mrml_scene import make_scene

    ctx = make_scene()
    yield ctx
    ctx.close()
