"""SonoSAMSegment: Segment-Anything-family segmentation in 3D Slicer (module + Segment Editor effect).

Module / Widget / Logic / Test, as in Slicer's scripted-module template. The model runs in a server
process (SonoSAMSegmentLib.connection): on first use this module starts a local `sonosam serve` with
Slicer's own Python (127.0.0.1, a free port, a random token; Slicer 5.10+), installing its Python
packages first after asking; or it connects to a remote server (URL + token). The panel polls with a
QTimer: installs, server start, weight downloads and evaluation never block the GUI.

The Logic is the Qt-free ``SonoSAMSegmentLib.logic.SegmentLogic`` (tested headless against real
MRML). Python console::

    logic = slicer.util.getModuleLogic("SonoSAMSegment")       # uses the connected server
    logic.segment(volumeNode, segmentationNode, segmentId, box_ras=[[r0, a0, s0], [r1, a1, s1]], sliceAxis="axial")
"""

import json
import logging
import os

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

from SonoSAMSegmentLib import connection as conn
from SonoSAMSegmentLib.logic import SegmentLogic, editor_writer
from SonoSAMSegmentLib.ui import showErrors

POLL_MS = 100
SETTINGS = "SonoSAM/"


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
in the Segment Editor: click or drag a box in any slice view, preview, Apply. The model runs in a SonoSAM
server: this module starts one on this computer (installing its Python packages after asking; Slicer 5.10
or later) or connects to a remote one (a GPU host). The segmenting happens in Segment Editor > SonoSAM."""
        self.parent.acknowledgementText = """Builds on Segment Anything (Meta AI, Apache-2.0), LiteMedSAM / MedSAM
(Bo Wang lab, Apache-2.0) and 3D Slicer's Segment Editor."""
        slicer.app.connect("startupCompleted()", registerEffect)
        slicer.app.connect("aboutToQuit()", stopServer)


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


def stopServer():
    """Slicer is closing: stop the local server (it would also exit when its stdin closes)."""
    conn.shared_connection().stop()


def slicerVersion():
    return (int(slicer.app.majorVersion), int(slicer.app.minorVersion))


#
# Widget
#

class SonoSAMSegmentWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.connection = conn.shared_connection()
        self.modelsProcess = None     # `sonosam models --json` (BackgroundProcess)
        self.downloadProcess = None   # `sonosam models --download NAME`
        self.evaluationJob = None
        self.modesTask = None         # (kind, task, context): a Refine / Learn / Auto job being polled
        self.undoSkipped = False      # the last write saved no Segment Editor undo state (_saveStateForUndo)
        self.autoChoices = []         # [(PPN file name, class)] behind the Auto class combo box
        self.models = []
        self.timer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SonoSAMSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SonoSAMSegmentLogic()
        settings = qt.QSettings()
        self.ui.modelComboBox.addItem(settings.value(SETTINGS + "Model", conn.DEFAULT_MODEL))
        self.ui.urlLineEdit.text = settings.value(SETTINGS + "URL", "")
        problem = conn.local_server_problem(slicerVersion())
        self.ui.serverModeComboBox.currentIndex = 1 if problem or settings.value(SETTINGS + "Mode") == "remote" else 0
        if problem:
            self.ui.serverModeComboBox.setItemData(0, 0, qt.Qt.UserRole - 1)  # disable "On this computer"
            self.ui.serverModeComboBox.toolTip = problem
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onTimer)
        # signals last: filling the widgets above must not start anything
        self.ui.serverModeComboBox.connect("currentIndexChanged(int)", self.updateGUI)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.downloadButton.connect("clicked(bool)", self.onDownload)
        self.ui.downloadStopButton.connect("clicked(bool)", self.onDownloadStop)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.listModels)
        self.ui.openEditorButton.connect("clicked(bool)", self.onOpenEditor)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.ui.evalStopButton.connect("clicked(bool)", self.onEvaluateStop)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.learnButton.connect("clicked(bool)", self.onLearn)
        self.ui.baseModelButton.connect("clicked(bool)", self.onBaseModel)
        self.ui.autoRefreshButton.connect("clicked(bool)", self.listPPNs)
        self.ui.autoButton.connect("clicked(bool)", self.onAuto)
        self.ui.modesStopButton.connect("clicked(bool)", self.onModesStop)
        self.connection.listeners.append(self.onConnectionChanged)
        self.layout.addStretch(1)
        self.updateGUI()
        if problem:
            self.ui.serverStatusLabel.text = problem
        elif not conn.missing(conn.server_requirements()):
            self.listModels()

    def cleanup(self):
        if self.timer is not None:   # None when setup() failed before making it
            self.timer.stop()
        if self.onConnectionChanged in self.connection.listeners:
            self.connection.listeners.remove(self.onConnectionChanged)

    def enter(self):
        if self.timer is not None:
            self.timer.start()

    def exit(self):
        if self.timer is not None and not (self.connection.busy or self.modelsProcess or self.downloadProcess
                                           or self.evaluationJob or self.modesTask):
            self.timer.stop()

    # -- server ---------------------------------------------------------------------------------------
    def remote(self):
        return self.ui.serverModeComboBox.currentIndex == 1

    def updateGUI(self, *unused):
        remote = self.remote()
        for w in (self.ui.urlLabel, self.ui.urlLineEdit, self.ui.tokenLabel, self.ui.tokenLineEdit):
            w.visible = remote
        for w in (self.ui.modelLabel, self.ui.modelComboBox, self.ui.checkpointLabel, self.ui.checkpointPathLineEdit):
            w.visible = not remote
        busy = self.connection.busy
        self.ui.startButton.text = "Connect" if remote else ("Restart" if self.connection.state == "ready" else "Start")
        self.ui.startButton.enabled = not busy
        self.ui.stopButton.enabled = self.connection.state != "off"
        self.ui.serverProgress.visible = busy
        self.ui.serverStatusLabel.text = self.connection.status
        self.ui.downloadButton.enabled = self.downloadProcess is None and not remote
        self.ui.downloadStopButton.enabled = self.downloadProcess is not None
        self.ui.evaluateButton.enabled = self.evaluationJob is None
        self.ui.evalStopButton.enabled = self.evaluationJob is not None
        idle = self.modesTask is None
        for button in (self.ui.refineButton, self.ui.learnButton, self.ui.autoButton, self.ui.autoRefreshButton):
            button.enabled = idle
        assisted = getattr(self.connection.client, "assist", None) is not None
        self.ui.baseModelButton.enabled = idle and assisted
        self.ui.modesProgress.visible = self.ui.modesStopButton.visible = not idle
        if idle and not assisted and self.ui.modesStatusLabel.text.startswith("Model: learned"):
            self.ui.modesStatusLabel.text = "Model: the base model."

    def onConnectionChanged(self, connection):
        self.logic.set_predictor(connection.client)
        self.updateGUI()
        if connection.state == "ready" and not connection.remote and not self.models:
            self.listModels()
        if connection.state == "ready" and not self.autoChoices and self.modesTask is None:
            self.listPPNs()   # one short request: the server's prompt predictors and their classes

    def onStart(self):
        settings = qt.QSettings()
        with showErrors("SonoSAM could not start its server."):
            if self.remote():
                settings.setValue(SETTINGS + "Mode", "remote")
                settings.setValue(SETTINGS + "URL", self.ui.urlLineEdit.text.strip())
                self.connection.use_remote(self.ui.urlLineEdit.text, self.ui.tokenLineEdit.text)
                if self.connection.error:
                    raise RuntimeError(self.connection.error)
                return
            settings.setValue(SETTINGS + "Mode", "local")
            model = self.ui.modelComboBox.currentText.strip() or conn.DEFAULT_MODEL
            settings.setValue(SETTINGS + "Model", model)
            needed = conn.missing(conn.server_requirements())
            install = False
            if needed:
                names = "\n  ".join(needed)
                install = slicer.util.confirmOkCancelDisplay(
                    f"SonoSAM's server needs these Python packages in Slicer's Python:\n\n  {names}\n\n"
                    "Install them now? (PyTorch alone takes several hundred MB, on Linux a few GB; it runs in the "
                    "background, Slicer stays usable. Slicer's own numpy, SimpleITK and VTK are kept as they are.)",
                    "SonoSAM: install Python packages")
                if not install:
                    return
            self.connection.use_local(conn.slicer_python(), model, self.ui.checkpointPathLineEdit.currentPath or None,
                                      slicer_version=slicerVersion(), install=install, needed=needed)
            self.timer.start()
            if self.connection.state == "failed":
                raise RuntimeError(self.connection.error)

    def onStop(self):
        self.connection.stop()

    def onTimer(self):
        self.connection.poll()
        self.ui.serverStatusLabel.text = self.connection.status
        with showErrors("SonoSAM could not list its models."):
            self._pollModels()
        with showErrors("Downloading the model failed."):
            self._pollDownload()
        with showErrors("SonoSAM could not evaluate the model."):
            self._pollEvaluation()
        with showErrors("SonoSAM: Refine / Learn / Auto failed."):
            self._pollModes()

    # -- models (listed and downloaded by the server's Python, in child processes) --------------------
    def listModels(self):
        with showErrors("SonoSAM could not list its models."):   # Refresh, setup and a new connection call it
            if self.modelsProcess is not None or self.remote():
                return
            self.modelsProcess = conn.BackgroundProcess([conn.slicer_python(), "-m", "sonosam", "models", "--json"],
                                                        self.connection.work_dir / "models.json.log", conn.core_env())
            self.ui.statusLabel.text = "Listing the models..."
            self.timer.start()

    def _pollModels(self):
        process = self.modelsProcess
        if process is None or process.poll() is None:
            return
        self.modelsProcess = None
        self.ui.statusLabel.text = ""
        if process.poll() != 0:
            raise RuntimeError(f"`sonosam models` failed: {process.last_line()}")
        output = process.log_path.read_text(encoding="utf-8", errors="replace")   # core_env: the child writes UTF-8
        self.models = json.loads(output.strip().splitlines()[-1])
        table = self.ui.modelsTable
        table.setRowCount(0)
        current = self.ui.modelComboBox.currentText
        self.ui.modelComboBox.clear()
        for m in self.models:
            row = table.rowCount
            table.insertRow(row)
            weights = m["weights"] or ("downloadable" if m["downloadable"] else f"get it: {m['where_to_get']}")
            for col, text in enumerate((m["name"], ", ".join(m["prompt_kinds"]), weights, m["description"])):
                table.setItem(row, col, qt.QTableWidgetItem(text))
            self.ui.modelComboBox.addItem(m["name"])
        self.ui.modelComboBox.setCurrentText(current or conn.DEFAULT_MODEL)

    def _selectedModel(self):
        row = self.ui.modelsTable.currentRow()
        if row < 0:
            raise ValueError("Select a model in the table first.")
        return self.ui.modelsTable.item(row, 0).text()

    def onDownload(self):
        with showErrors("Could not download the model."):
            name = self._selectedModel()
            self.downloadProcess = conn.BackgroundProcess(
                [conn.slicer_python(), "-m", "sonosam", "models", "--download", name],
                self.connection.work_dir / "download.log", conn.core_env())
            self.ui.downloadProgress.visible = True
            self.ui.statusLabel.text = f"Downloading {name} (checksum verified on arrival)..."
            self.timer.start()
            self.updateGUI()

    def onDownloadStop(self):
        process = self.downloadProcess
        if process is None or process.poll() is not None:   # it has just ended: the next tick reports how
            return
        self.downloadProcess = None
        process.stop()   # `sonosam models` removes its partial file on SIGTERM (temp file + rename)
        self.ui.downloadProgress.visible = False
        self.ui.statusLabel.text = "Download stopped."
        self.updateGUI()

    def _pollDownload(self):
        process = self.downloadProcess
        if process is None:
            return
        code = process.poll()
        if code is None:
            self.ui.statusLabel.text = process.last_line()[:120]
            return
        self.downloadProcess = None
        self.ui.downloadProgress.visible = False
        self.updateGUI()
        if code != 0:
            raise RuntimeError(process.last_line())
        self.ui.statusLabel.text = process.last_line()
        self.listModels()

    # -- evaluation (a server job) --------------------------------------------------------------------
    def onEvaluate(self):
        with showErrors("SonoSAM could not evaluate the model."):
            self.evaluationJob = self.logic.start_evaluation(
                self.ui.evalVolumeSelector.currentNode(), self.ui.evalSegmentSelector.currentNode(),
                self.ui.evalSegmentSelector.currentSegmentID(), self.ui.evalAxisComboBox.currentText,
                nClicks=self.ui.evalClicksSpinBox.value, start=self.ui.evalStartComboBox.currentText,
                maxSlices=self.ui.evalMaxSlicesSpinBox.value or None,
                localCorrections=self.ui.evalLocalCheckBox.checked)
            self.ui.evalResultLabel.text = "Evaluating on the server..."
            self.timer.start()
        self.updateGUI()

    def onEvaluateStop(self):
        if self.evaluationJob is not None:
            from sonosam.client import GUI_POLL_SECONDS

            with showErrors("SonoSAM could not stop the evaluation."):
                self.evaluationJob.cancel(timeout=GUI_POLL_SECONDS)   # a hung server's late answer: polled again
            self.ui.evalResultLabel.text = "Stopping the evaluation..."

    def _pollEvaluation(self):
        job = self.evaluationJob
        if job is None:
            return
        try:
            from sonosam.client import GUI_POLL_SECONDS

            status = job.poll(timeout=GUI_POLL_SECONDS)
            if status["state"] not in ("done", "failed", "cancelled"):
                done, total = status["progress"][:2]
                self.ui.evalResultLabel.text = (f"Evaluating: {status['message']}" if status["state"] == "sending"
                                                else f"Evaluating: {done}/{total} slices...")
                return
            self.evaluationJob = None
            if status["state"] == "cancelled":
                self.ui.evalResultLabel.text = "Evaluation stopped: no table."
                self.updateGUI()
                return
            rows = job.result(timeout=5)["table"]
        except Exception:
            self.evaluationJob = None
            self.ui.evalResultLabel.text = ""
            self.updateGUI()
            raise
        self.updateGUI()
        self.ui.evalResultLabel.text = "\n".join(f"{key}: {value}" for row in rows for key, value in row.items())

    # -- Refine / Learn / Auto (server jobs polled by the timer; the logic is SonoSAMSegmentLib.logic) ---
    def _modesInputs(self, needSegment=True):
        volume = self.ui.modesVolumeSelector.currentNode()
        segmentation = self.ui.modesSegmentSelector.currentNode()
        segmentId = self.ui.modesSegmentSelector.currentSegmentID()
        if volume is None:
            raise ValueError("Choose the volume.")
        if segmentation is None or (needSegment and not segmentId):
            raise ValueError("Choose the segmentation and the segment.")
        return volume, segmentation, segmentId or None, self.ui.modesAxisComboBox.currentText

    def _startModes(self, kind, task, context, message):
        self.modesTask = (kind, task, context)
        self.ui.modesProgress.maximum = 0   # busy until the first progress report
        self.ui.modesStatusLabel.text = message
        self.timer.start()
        self.updateGUI()

    def onRefine(self):
        with showErrors("SonoSAM could not refine the segment."):
            volume, segmentation, segmentId, axis = self._modesInputs()
            view = {"axial": "Red", "coronal": "Green", "sagittal": "Yellow"}[axis]
            sliceWidget = slicer.app.layoutManager().sliceWidget(view)
            if sliceWidget is None:
                raise ValueError(f"Show the {view} slice view: Refine works on the slice it shows.")
            sliceToRAS = slicer.util.arrayFromVTKMatrix(sliceWidget.mrmlSliceNode().GetSliceToRAS())
            task = self.logic.start_refine_segment(volume, segmentation, segmentId, sliceToRAS=sliceToRAS)
            self._startModes("refine", task, dict(volume=volume, segmentation=segmentation, segmentId=segmentId),
                             f"Refining the segment on the {view} view's slice...")

    def onLearn(self):
        with showErrors("SonoSAM could not learn from the segment."):
            volume, segmentation, segmentId, axis = self._modesInputs()
            slices = self.logic.accepted_slices(volume, segmentation, segmentId, axis)
            task = self.logic.start_learning(volume, segmentation, segmentId, axis, slices=slices)
            self._startModes("learn", task, {}, f"Learning from slices {', '.join(map(str, slices))}...")

    def onBaseModel(self):
        self.connection.use_assist(None)   # every module (and the Segment Editor effect) back to the base model
        self.ui.modesStatusLabel.text = "Model: the base model."
        self.updateGUI()

    def listPPNs(self):
        with showErrors("SonoSAM could not list the prompt predictors."):
            self.autoChoices = [(p["name"], c) for p in self.logic.available_ppns() for c in p["classes"]]
            self.ui.autoClassComboBox.clear()
            for name, className in self.autoChoices:
                self.ui.autoClassComboBox.addItem(f"{className} ({name})")
            if not self.autoChoices:
                self.ui.modesStatusLabel.text = ("The server has no trained prompt predictor: put one from `sonosam "
                                                 "train ppn` in its ppn folder (docs/seeds.md), then Refresh.")

    def onAuto(self):
        with showErrors("SonoSAM could not start Auto."):
            into = self.ui.autoIntoSegmentCheckBox.checked
            volume, segmentation, segmentId, axis = self._modesInputs(needSegment=into)
            if not self.autoChoices:
                self.listPPNs()
            index = self.ui.autoClassComboBox.currentIndex
            if not 0 <= index < len(self.autoChoices):
                raise ValueError("Choose a class of a trained prompt predictor (Refresh lists the server's).")
            name, className = self.autoChoices[index]
            sliceRange = None
            if self.ui.autoRangeCheckBox.checked:
                sliceRange = (self.ui.autoFirstSpinBox.value, self.ui.autoLastSpinBox.value)
            task = self.logic.start_auto_segment(volume, segmentation, className, name,
                                                 segmentId=segmentId if into else None, sliceAxis=axis,
                                                 sliceRange=sliceRange)
            self._startModes("auto", task, dict(volume=volume, segmentation=segmentation,
                                                segmentId=segmentId if into else None), f"Auto: {className}...")

    def onModesStop(self):
        if self.modesTask is not None:
            with showErrors("SonoSAM could not stop the job."):
                self.modesTask[1].cancel()

    def _saveStateForUndo(self, segmentationNode):
        """One Ctrl+Z in the Segment Editor undoes the next write: its own history, on this segmentation. Never
        switches an editor that shows another segmentation (that would deactivate its effect, stopping a running
        propagation, and clear that segmentation's undo history): the write then has no undo step, and says so."""
        self.undoSkipped = True
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        if editor.mrmlSegmentEditorNode() is None:
            logging.info("SonoSAM: the Segment Editor has no parameter node: no undo state saved")
            return
        if editor.segmentationNode() is None:
            editor.setSegmentationNode(segmentationNode)
        elif editor.segmentationNode() is not segmentationNode:
            logging.info("SonoSAM: the Segment Editor shows another segmentation: no undo state saved")
            return
        editor.saveStateForUndo()
        self.undoSkipped = False

    def _writer(self, context):
        """How Refine and Auto write: with the Segment Editor's masking (editable area, intensity range, "modify
        other segments") where it shows this segment of this volume, selected, as its own effects would; else
        everywhere, never overwriting other segments (the editor's masking is about its selected segment and source
        volume). One undo step in either case, where the editor shows this segmentation."""
        segmentation, segmentId = context["segmentation"], context.get("segmentId")
        node = slicer.modules.segmenteditor.widgetRepresentation().self().editor.mrmlSegmentEditorNode()
        shown = (node is not None and segmentId and node.GetSegmentationNode() is segmentation
                 and node.GetSelectedSegmentID() == segmentId and node.GetSourceVolumeNode() is context["volume"])
        return editor_writer(node if shown else None,
                             before_first_write=lambda *_: self._saveStateForUndo(segmentation))

    def _undoNote(self, writer) -> str:
        masking = (" With the Segment Editor's masking." if writer.editor_node.GetScene() is not None else
                   " Written everywhere (the Segment Editor's masking applies when it shows this segment selected, "
                   "on this volume).")
        return masking + (" No undo step: the Segment Editor shows another segmentation (select this one there before "
                          "the next run to undo it with Ctrl+Z)." if self.undoSkipped
                          else " (Ctrl+Z in the Segment Editor undoes it.)")

    def _pollModes(self):
        if self.modesTask is None:
            return
        kind, task, context = self.modesTask
        try:
            state, done, total, message = task.poll()   # at most GUI_POLL_SECONDS, or one upload step
        except Exception:
            self.modesTask = None
            self.updateGUI()
            raise
        if state not in ("done", "failed", "cancelled"):
            self.ui.modesProgress.maximum = max(total, 0)
            self.ui.modesProgress.value = min(done, total)
            if message:
                self.ui.modesStatusLabel.text = message
            return
        self.modesTask = None
        self.ui.modesStatusLabel.text = ""
        try:
            if state == "cancelled":
                self.ui.modesStatusLabel.text = "Stopped: nothing was written."
            elif kind == "refine":
                prediction = task.finish()   # raises the job's error when it failed
                writer = self._writer(context)
                self.logic.apply(prediction, context["volume"], context["segmentation"], context["segmentId"],
                                 modify=writer)
                self.ui.modesStatusLabel.text = f"Refined: {prediction.notes[0]}." + self._undoNote(writer)
            elif kind == "learn":
                summary = task.finish().summary()
                self.connection.use_assist(self.logic.predictor)   # the effect's clicks and propagation use it too
                self.ui.modesStatusLabel.text = "Model: " + summary[0].lower() + summary[1:]
            else:
                writer = self._writer(context)
                outcome = task.finish(modify=writer)
                self.ui.modesStatusLabel.text = (outcome.summary() + " Correct it with clicks (Segment Editor > SonoSAM)."
                                                 + (self._undoNote(writer) if outcome.written or outcome.created else ""))
        finally:
            self.updateGUI()

    def onOpenEditor(self):
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setActiveEffectByName("SonoSAM")


#
# Logic: the Qt-free logic, on the shared server connection
#

class SonoSAMSegmentLogic(SegmentLogic, ScriptedLoadableModuleLogic):
    """Scripting API: ``segment(volumeNode, segmentationNode, segmentId, points_ras=..., labels=...,
    box_ras=..., sliceAxis=..., mode=...)``; see SonoSAMSegmentLib.logic for everything else. The model
    is the connected server's (start it in the module panel, or ``shared_connection().use_local(...)``)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentLogic.__init__(self, in_process=False)
        self.set_predictor(conn.shared_connection().client)

    @property
    def predictor(self):
        client = conn.shared_connection().client
        if client is not None and client is not self._predictor:
            self.set_predictor(client)
        return SegmentLogic.predictor.fget(self)


#
# Test (runs inside Slicer: Reload and Test, or ctest via slicer_add_python_unittest)
#

class SonoSAMSegmentTest(ScriptedLoadableModuleTest):
    """The masking checks (Testing/slicer/masking_checks.py) on Slicer's own scene; no server needed."""

    def runTest(self):
        import sys

        root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "Testing", "slicer"))
        if not os.path.isdir(root):
            self.delayDisplay("Testing/slicer is not next to the module (installed extension): nothing to run")
            return
        if root not in sys.path:
            sys.path.insert(0, root)
        import masking_checks

        slicer.mrmlScene.Clear()
        for check in masking_checks.CHECKS:
            check(slicer.mrmlScene)
            self.delayDisplay(f"{check.__name__}: passed")
