"""The modules' Logic classes put together as Slicer 5.10 builds them (headless; the real MRML scene).

The scripted modules' Logic classes join Slicer's ``ScriptedLoadableModuleLogic`` and the Qt-free logic. In Slicer
5.10 ``ScriptedLoadableModuleLogic.__init__(self, parent=None)`` begins with ``super().__init__()``
(Base/Python/slicer/ScriptedLoadableModule.py, lines 297-298 on the 5.10 branch), so in a class that lists it
first, that call reaches the Qt-free logic's ``__init__`` with no arguments: ``SonoSAMTrackLogic()`` then failed
with "TrackLogic.__init__() missing 1 required positional argument: 'scene'" and the Track panel never set up.
The application classes (``qt``, the rest of ``slicer.ScriptedLoadableModule``) are not installable here, so the
test gives the modules a ``ScriptedLoadableModuleLogic`` whose ``__init__`` does what 5.10's does, and builds each
Logic on a real scene."""

import importlib
import sys
import types

import pytest


class ScriptedLoadableModuleLogic:
    """The part of Slicer 5.10's class that decides how a subclass's bases are initialised."""

    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__.removesuffix("Logic")


class _QtClass:
    def __init__(self, *args, **kwargs):
        pass


@pytest.fixture
def slicer_module(mrml, monkeypatch):
    """Import a module file as Slicer would (its scene as ``slicer.mrmlScene``); returns an importer."""
    import slicer

    application = types.ModuleType("slicer.ScriptedLoadableModule")
    application.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
        setattr(application, name, type(name, (_QtClass,), {}))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", application)
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setattr(slicer, "mrmlScene", mrml.scene, raising=False)

    def load(name):
        monkeypatch.delitem(sys.modules, name, raising=False)
        module = importlib.import_module(name)
        monkeypatch.delitem(sys.modules, name)   # not left behind with this test's stand-ins in it
        return module

    return load


def test_track_logic_builds_on_the_scene(slicer_module):
    module = slicer_module("SonoSAMTrack")
    predictor = object()
    logic = module.SonoSAMTrackLogic(predictor)
    assert logic.scene is module.slicer.mrmlScene
    assert logic.predictor is predictor
    assert logic.moduleName == "SonoSAMTrack"   # Slicer's part initialised too (its parameter node's name)


def test_segment_logic_builds_without_loading_a_model(slicer_module):
    module = slicer_module("SonoSAMSegment")
    logic = module.SonoSAMSegmentLogic()
    assert logic.in_process is False             # the GUI's logic never loads a model in Slicer's process
    assert logic.moduleName == "SonoSAMSegment"
