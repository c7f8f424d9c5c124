"""Segment Editor effect "SonoSAM": click / box prompts in any slice view, live preview, Apply / Cancel.

Thin Qt layer over the Qt-free logic (SonoSAMSegmentLib.logic): every computation -- RAS -> slice
geometry, the model call, writing the slice into the segment -- is there and tested headless. Here:
mouse events, widgets, undo, a QTimer that polls the background encoder.

Mouse: left click = positive point; Ctrl/Shift + left click (or the "negative" toggle) = negative point;
left drag = box. Markers are markups control points: delete one (right-click > Delete) and the preview
follows. Enter = Apply, Escape = Cancel.
"""

import logging
import os

import ctk
import numpy as np
import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from SonoSAMSegmentLib.logic import MODES, PromptSession, SonoSAMSegmentLogic, show_preview

DRAG_PIXELS = 6  # mouse travel that turns a click into a box


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Segment-Anything-family segmentation from clicks and boxes (SonoSAM)."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "SonoSAM"
        scriptedEffect.title = "SonoSAM"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = None
        self.session = None
        self.previewNode = None
        self.markupsNode = None
        self.boxNode = None
        self.prefetchJob = None
        self.pressXY = None
        self.pressRAS = None
        self.pressView = None
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(150)
        self.pollTimer.connect("timeout()", self._pollPrefetch)
        self.markupsObserver = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return """<html>Segment with Segment-Anything-family models (SonoSAM).<p>
<b>Left click</b>: point inside the structure. <b>Ctrl/Shift + click</b>: point outside.
<b>Drag</b>: box around the structure (the default LiteMedSAM model needs a box).
The mask is previewed at once; <b>Apply</b> writes it into the selected segment on this slice
(replace / add / remove), <b>Cancel</b> drops it. Works in axial, coronal, sagittal and oblique views.
</html>"""

    # -- options panel ------------------------------------------------------------------------------
    def setupOptionsFrame(self):
        self.modelSelector = qt.QComboBox()
        self.modelSelector.toolTip = "Model (weights are managed in the SonoSAMSegment module)"
        self.deviceSelector = qt.QComboBox()
        self.deviceSelector.addItems(["auto", "cpu", "cuda", "mps"])
        self.cacheSpinBox = qt.QSpinBox()
        self.cacheSpinBox.setRange(64, 65536)
        self.cacheSpinBox.setSuffix(" MiB")
        self.cacheSpinBox.toolTip = "Memory budget of the embedding cache"
        form = qt.QFormLayout()
        form.addRow("Model:", self.modelSelector)
        form.addRow("Device:", self.deviceSelector)
        form.addRow("Cache:", self.cacheSpinBox)
        settings = ctk.ctkCollapsibleButton()
        settings.text = "Model settings"
        settings.collapsed = True
        settings.setLayout(form)
        self.scriptedEffect.addOptionsWidget(settings)

        self.modeButtons = {}
        modeRow = qt.QHBoxLayout()
        group = qt.QButtonGroup(modeRow)
        for mode, text, tip in (("replace", "Replace", "Replace the segment on this slice"),
                                ("add", "Add", "Add the mask to the segment"),
                                ("remove", "Remove", "Remove the mask from the segment")):
            button = qt.QRadioButton(text)
            button.toolTip = tip
            group.addButton(button)
            modeRow.addWidget(button)
            self.modeButtons[mode] = button
            button.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.scriptedEffect.addLabeledOptionsWidget("Mode:", modeRow)

        self.negativeCheckBox = qt.QCheckBox("Next clicks are negative (outside)")
        self.refineCheckBox = qt.QCheckBox("Refine the existing segment (use it as mask prompt)")
        self.scriptedEffect.addOptionsWidget(self.negativeCheckBox)
        self.scriptedEffect.addOptionsWidget(self.refineCheckBox)

        self.statusLabel = qt.QLabel("")
        self.busyBar = qt.QProgressBar()
        self.busyBar.setRange(0, 0)  # indeterminate: "encoding in the background"
        self.busyBar.visible = False
        self.scriptedEffect.addOptionsWidget(self.busyBar)
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        buttons = qt.QHBoxLayout()
        self.undoPromptButton = qt.QPushButton("Remove last prompt")
        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.toolTip = "Write the preview into the selected segment (Enter). Ctrl+Z undoes it."
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.toolTip = "Drop the preview and the prompts (Escape)"
        for b in (self.undoPromptButton, self.cancelButton, self.applyButton):
            buttons.addWidget(b)
        self.scriptedEffect.addOptionsWidget(buttons)
        self.undoPromptButton.connect("clicked()", self.onRemoveLastPrompt)
        self.applyButton.connect("clicked()", self.onApply)
        self.cancelButton.connect("clicked()", self.onCancel)
        for w, signal in ((self.modelSelector, "currentIndexChanged(int)"), (self.deviceSelector, "currentIndexChanged(int)"),
                          (self.cacheSpinBox, "valueChanged(int)"), (self.refineCheckBox, "toggled(bool)")):
            w.connect(signal, self.updateMRMLFromGUI)
        self._setupPropagate()
        self._fillModels()

    def _setupPropagate(self):
        """"Propagate": carry the selected segment through the volume from its slices (the logic's propagate)."""
        self.propagateAxis = qt.QComboBox()
        self.propagateAxis.addItems(["axial", "coronal", "sagittal"])
        self.propagateRange = qt.QComboBox()
        self.propagateRange.addItems(["until the structure ends", "whole volume", "N slices"])
        self.propagateRange.toolTip = ("Until the structure ends: the model's stop rules end each front. Whole "
                                       "volume: the same rules, no slice limit. N slices: at most N from each seed.")
        self.propagateSlices = qt.QSpinBox()
        self.propagateSlices.setRange(1, 2000)
        self.propagateSlices.value = 10
        self.propagateDirection = qt.QComboBox()
        self.propagateDirection.addItems(["both", "forward", "backward"])
        self.propagateDirection.toolTip = "Forward = increasing slice index along the axis"
        self.propagateButton = qt.QPushButton("Propagate")
        self.propagateButton.toolTip = ("Segment the selected segment on the other slices, starting from the slices "
                                        "it already has (kept as they are). After correcting a slice, click again: "
                                        "only the slices next to the correction are recomputed. Ctrl+Z undoes it.")
        form = qt.QFormLayout()
        form.addRow("Slice axis:", self.propagateAxis)
        form.addRow("Range:", self.propagateRange)
        form.addRow("Slices (N):", self.propagateSlices)
        form.addRow("Direction:", self.propagateDirection)
        form.addRow(self.propagateButton)
        box = ctk.ctkCollapsibleButton()
        box.text = "Propagate through the volume"
        box.collapsed = True
        box.setLayout(form)
        self.scriptedEffect.addOptionsWidget(box)
        self.propagateButton.connect("clicked()", self.onPropagate)

    def onPropagate(self):
        import threading

        parameterSet = self.scriptedEffect.parameterSetNode()
        volume = parameterSet.GetSourceVolumeNode()
        segmentation = parameterSet.GetSegmentationNode()
        segmentId = parameterSet.GetSelectedSegmentID()
        nSlices = self.propagateSlices.value if self.propagateRange.currentText == "N slices" else None
        cancel = threading.Event()
        dialog = slicer.util.createProgressDialog(labelText="Propagating...", maximum=0)

        def progress(done, total, info):
            dialog.maximum = total
            dialog.value = done
            dialog.labelText = f"Slice {info.index}: {info.status}"
            slicer.app.processEvents()
            if dialog.wasCanceled:
                cancel.set()

        try:
            with slicer.util.tryWithErrorDisplay("SonoSAM could not propagate the segment.", waitCursor=True):
                logic = self._ensureLogic()
                self.onCancel()
                self.scriptedEffect.saveStateForUndo()
                summary = logic.propagate(volume, segmentation, segmentId, self.propagateAxis.currentText,
                                          direction=self.propagateDirection.currentText, maxSlices=nSlices,
                                          progress=progress, cancel=cancel)
                self.statusLabel.text = summary
        finally:
            dialog.close()

    def _fillModels(self):
        self.modelSelector.clear()
        try:
            from sonosam.models import list_models

            for spec in list_models():
                self.modelSelector.addItem(spec.name)
                self.modelSelector.setItemData(self.modelSelector.count - 1, spec.description, qt.Qt.ToolTipRole)
        except ImportError:
            self.modelSelector.addItem("litemedsam")
            self.statusLabel.text = "Dependencies missing: open the SonoSAMSegment module to install them."

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Model", "litemedsam")
        self.scriptedEffect.setParameterDefault("Device", "auto")
        self.scriptedEffect.setParameterDefault("CacheMiB", 1024)
        self.scriptedEffect.setParameterDefault("Mode", "replace")
        self.scriptedEffect.setParameterDefault("Refine", 1)

    def updateGUIFromMRML(self):
        widgets = [self.modelSelector, self.deviceSelector, self.cacheSpinBox, self.refineCheckBox] + list(self.modeButtons.values())
        blocked = [w.blockSignals(True) for w in widgets]
        try:
            self.modelSelector.setCurrentText(self.scriptedEffect.parameter("Model"))
            self.deviceSelector.setCurrentText(self.scriptedEffect.parameter("Device"))
            self.cacheSpinBox.value = self.scriptedEffect.integerParameter("CacheMiB")
            self.refineCheckBox.checked = self.scriptedEffect.integerParameter("Refine") != 0
            mode = self.scriptedEffect.parameter("Mode")
            self.modeButtons.get(mode, self.modeButtons["replace"]).checked = True
        finally:
            for w, b in zip(widgets, blocked):
                w.blockSignals(b)
        hasPreview = self.session is not None and self.session.prediction is not None
        self.applyButton.enabled = hasPreview
        self.cancelButton.enabled = self.session is not None and not self.session.empty

    def updateMRMLFromGUI(self, *unused):
        self.scriptedEffect.setParameter("Model", self.modelSelector.currentText)
        self.scriptedEffect.setParameter("Device", self.deviceSelector.currentText)
        self.scriptedEffect.setParameter("CacheMiB", self.cacheSpinBox.value)
        self.scriptedEffect.setParameter("Refine", 1 if self.refineCheckBox.checked else 0)
        for mode, button in self.modeButtons.items():
            if button.checked:
                self.scriptedEffect.setParameter("Mode", mode)
        self._ensureLogic()

    # -- life cycle ---------------------------------------------------------------------------------
    def _ensureLogic(self):
        model = self.scriptedEffect.parameter("Model") or "litemedsam"
        device = self.scriptedEffect.parameter("Device")
        device = None if device in ("", "auto") else device
        cache = self.scriptedEffect.integerParameter("CacheMiB") or 1024
        if self.logic is None:
            self.logic = SonoSAMSegmentLogic(model, device=device, cache_mib=cache)
        elif (self.logic.model_name, self.logic.device, self.logic.cache_mib) != (model, device, cache):
            self.logic.set_model(model, device=device, cache_mib=cache)
        if self.session is None:
            self.session = PromptSession(self.logic, self._markups(), self._boxMarkups())
        self.session.logic = self.logic
        return self.logic

    def _markups(self):
        if self.markupsNode is None or self.markupsNode.GetScene() is None:
            self.markupsNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "SonoSAM prompts")
            self.markupsNode.SetSaveWithScene(False)
            self.markupsNode.CreateDefaultDisplayNodes()
            display = self.markupsNode.GetDisplayNode()
            display.SetGlyphScale(2.0)
            display.SetSelectedColor(0.2, 0.9, 0.2)
            self.markupsNode.SetLocked(False)
            self.markupsObserver = self.markupsNode.AddObserver(
                slicer.vtkMRMLMarkupsNode.PointRemovedEvent, lambda *a: qt.QTimer.singleShot(0, self._onMarkupsEdited))
        return self.markupsNode

    def _boxMarkups(self):
        if self.boxNode is None or self.boxNode.GetScene() is None:
            self.boxNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "SonoSAM box")
            self.boxNode.SetSaveWithScene(False)
            self.boxNode.CreateDefaultDisplayNodes()
            self.boxNode.SetLocked(True)
        return self.boxNode

    def _previewSegmentation(self):
        if self.previewNode is None or self.previewNode.GetScene() is None:
            self.previewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SonoSAM preview")
            self.previewNode.SetSaveWithScene(False)
            self.previewNode.CreateDefaultDisplayNodes()
            self.previewNode.GetDisplayNode().SetOpacity(0.6)
        return self.previewNode

    def activate(self):
        self._ensureLogic()
        self.shortcuts = []
        for key, slot in (("Return", self.onApply), ("Enter", self.onApply), ("Escape", self.onCancel)):
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", slot)
            self.shortcuts.append(shortcut)
        self._startPrefetchForViews()

    def deactivate(self):
        for shortcut in getattr(self, "shortcuts", []):
            shortcut.setParent(None)
            shortcut.deleteLater()
        self.shortcuts = []
        self.onCancel()
        self.pollTimer.stop()
        if self.prefetchJob is not None:
            self.prefetchJob.cancel()
        for attr in ("previewNode", "markupsNode", "boxNode"):
            node = getattr(self, attr)
            if node is not None and node.GetScene() is not None:
                slicer.mrmlScene.RemoveNode(node)
            setattr(self, attr, None)
        self.session = None

    # -- mouse --------------------------------------------------------------------------------------
    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        volume = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        if volume is None:
            return False
        xy = callerInteractor.GetEventPosition()
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            self.pressXY, self.pressView = xy, viewWidget
            self.pressRAS = self.xyToRas(xy, viewWidget)
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent and self.pressXY is not None:
            sliceToRAS = self._sliceToRAS(viewWidget)
            ras = self.xyToRas(xy, viewWidget)
            dragged = max(abs(xy[0] - self.pressXY[0]), abs(xy[1] - self.pressXY[1])) >= DRAG_PIXELS
            negative = callerInteractor.GetControlKey() or callerInteractor.GetShiftKey() or self.negativeCheckBox.checked
            self.pressXY = None
            with slicer.util.tryWithErrorDisplay("SonoSAM could not use this prompt.", waitCursor=False):
                self._ensureLogic()
                if dragged:
                    self.session.set_box(volume, self.pressRAS, ras, slice_to_ras=sliceToRAS)
                else:
                    self.session.add_point(volume, ras, not negative, slice_to_ras=sliceToRAS)
                self._updatePreview(volume, sliceToRAS)
            return True
        return False

    def processViewNodeEvents(self, callerViewNode, eventId, viewWidget):
        # the slice moved: encode the new slice (and neighbours) in the background
        if callerViewNode and callerViewNode.IsA("vtkMRMLSliceNode"):
            qt.QTimer.singleShot(0, self._startPrefetchForViews)

    @staticmethod
    def _sliceToRAS(viewWidget):
        m = viewWidget.sliceLogic().GetSliceNode().GetSliceToRAS()
        return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])

    # -- model calls --------------------------------------------------------------------------------
    def _updatePreview(self, volume, sliceToRAS):
        parameterSet = self.scriptedEffect.parameterSetNode()
        segmentation = parameterSet.GetSegmentationNode()
        segmentId = parameterSet.GetSelectedSegmentID()
        geometry = self.logic.slice_geometry(volume, sliceToRAS=sliceToRAS,
                                             points_ras=self.session.points_ras or None, box_ras=self.session.box_ras)
        if not self.logic.is_cached(volume, geometry):
            # first prompt on this slice: the encoder must run. Keep the UI alive (busy indicator) and
            # re-run this preview when the background encoding is done.
            self._prefetch(volume, [geometry], then=lambda: self._updatePreview(volume, sliceToRAS))
            return
        prediction = self.session.predict(volume, segmentation, segmentId, slice_to_ras=sliceToRAS,
                                          refine=self.scriptedEffect.integerParameter("Refine") != 0)
        preview = self._previewSegmentation()
        segment = segmentation.GetSegmentation().GetSegment(segmentId) if segmentId else None
        color = segment.GetColor() if segment is not None else (1.0, 1.0, 0.0)
        show_preview(self.logic, prediction, volume, preview, color)
        if prediction is not None:
            notes = " ".join(prediction.notes)
            self.statusLabel.text = f"Predicted IoU {prediction.score:.2f}. {notes}".strip()
        self.updateGUIFromMRML()

    def _prefetch(self, volume, geometries, then=None):
        if self.prefetchJob is not None and not self.prefetchJob.done:
            self.prefetchJob.cancel()
        self.prefetchJob = self.logic.prefetch(volume, geometries)
        self._afterPrefetch = then
        self.busyBar.visible = True
        self.statusLabel.text = "Computing the image embedding in the background..."
        self.pollTimer.start()

    def _pollPrefetch(self):
        job = self.prefetchJob
        if job is None or not job.done:
            return
        self.pollTimer.stop()
        self.busyBar.visible = False
        self.statusLabel.text = ""
        then, self._afterPrefetch = getattr(self, "_afterPrefetch", None), None
        with slicer.util.tryWithErrorDisplay("SonoSAM could not encode this slice.", waitCursor=False):
            job.wait(0)  # re-raises an error from the worker thread
            if then is not None and not job.cancelled:
                then()

    def _startPrefetchForViews(self):
        """Encode the slice shown in each slice view (and its neighbours) ahead of the first click."""
        if self.logic is None or self._predictorNotLoaded():
            return
        volume = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode() if self.scriptedEffect.parameterSetNode() else None
        if volume is None or (self.prefetchJob is not None and not self.prefetchJob.done):
            return
        geometries = []
        layoutManager = slicer.app.layoutManager()
        for name in layoutManager.sliceViewNames():
            widget = layoutManager.sliceWidget(name)
            sliceToRAS = self._sliceToRAS(widget)
            try:
                g = self.logic.slice_geometry(volume, sliceToRAS=sliceToRAS)
            except Exception:  # view outside the volume: nothing to encode
                continue
            geometries += [x for x in self.logic.neighbour_geometries(volume, g, radius=1)
                           if not self.logic.is_cached(volume, x)]
        if geometries:
            self._prefetch(volume, geometries)

    def _predictorNotLoaded(self):
        # do not load a model (seconds, maybe a dependency prompt) just because the slice moved
        return self.logic._predictor is None

    # -- buttons ------------------------------------------------------------------------------------
    def onApply(self):
        if self.session is None or self.session.prediction is None:
            return
        parameterSet = self.scriptedEffect.parameterSetNode()
        volume = parameterSet.GetSourceVolumeNode()
        segmentation = parameterSet.GetSegmentationNode()
        segmentId = parameterSet.GetSelectedSegmentID()
        mode = self.scriptedEffect.parameter("Mode") or "replace"
        assert mode in MODES
        with slicer.util.tryWithErrorDisplay("SonoSAM could not write the segment.", waitCursor=True):
            self.scriptedEffect.saveStateForUndo()
            self.logic.apply(self.session.prediction, volume, segmentation, segmentId, mode)
            self.onCancel()

    def onCancel(self):
        if self.session is not None:
            self.session.clear()
        if self.previewNode is not None and self.logic is not None:
            volume = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
            if volume is not None:
                show_preview(self.logic, None, volume, self.previewNode)
        self.statusLabel.text = ""
        self.updateGUIFromMRML()

    def onRemoveLastPrompt(self):
        if self.session is None or not self.session.points_ras:
            return
        self.session.remove_point(len(self.session.points_ras) - 1)
        self._onMarkupsEdited()

    def _onMarkupsEdited(self):
        if self.session is None:
            return
        self.session.sync_from_markups()
        volume = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        with slicer.util.tryWithErrorDisplay("SonoSAM could not update the preview.", waitCursor=False):
            if self.session.empty:
                self.onCancel()
            else:
                viewSliceToRAS = None
                if self.pressView is not None:
                    viewSliceToRAS = self._sliceToRAS(self.pressView)
                self._updatePreview(volume, viewSliceToRAS)


logging.debug("SonoSAM Segment Editor effect loaded")
