"""SonoSAMSegment logic without Qt: MRML node -> numpy + geometry -> `sonosam` core -> mask -> segment.

Runs inside Slicer and headless on `slicer-core` (the tests). Only MRML / vtkSegmentationCore calls,
taken from the nodes' own scene -- never ``slicer.app``, ``slicer.mrmlScene`` or ``slicer.modules``.

Console use (inside Slicer the module's logic, ``slicer.util.getModuleLogic("SonoSAMSegment")``, uses the
connected SonoSAM server; elsewhere the model runs in-process)::

    from SonoSAMSegmentLib.logic import SegmentLogic
    logic = SegmentLogic()                      # default model: litemedsam_clicks (clicks and boxes)
    volume = getNode("MRHead"); seg = getNode("Segmentation")
    sid = seg.GetSegmentation().GetSegmentIdBySegmentName("tumor")
    logic.segment(volume, seg, sid, box_ras=[[10, -5, 20], [40, 25, 20]], sliceAxis="axial")
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import slicer.util

# The core's error types (sonosam/errors.py is installed with the extension and imports nothing heavy),
# so that one `except SonoSAMError` catches everything.
from sonosam.errors import InputImageError, PromptError, SonoSAMError
from sonosam.image import array_axis
from sonosam.prompts import Prompts

from . import geometry as geo

MODES = ("replace", "add", "remove")

class NoVolumeError(InputImageError):
    """No (usable) volume was given."""


class SegmentationError(SonoSAMError, ValueError):
    """The segmentation node or segment cannot be written (missing, wrong type)."""


class NotConnectedError(SonoSAMError):
    """The model runs in a server, and no server is connected."""


class MissingDependencyError(SonoSAMError, ImportError):
    """The `sonosam` core or one of its dependencies (torch...) is not installed."""


# ---------------------------------------------------------------------------------------------------
# Plain data passed between the logic, the effect and the tests
# ---------------------------------------------------------------------------------------------------

@dataclass
class VolumeInfo:
    node_id: str
    array: np.ndarray            # (K, J, I[, C]) view on the node's voxels (not a copy)
    ijk_to_world: np.ndarray     # 4x4, parent transforms included
    dims_ijk: tuple
    key: str                     # node ID + image-data modified time: identifies the pixels for the cache
    window: tuple | None         # intensity window given to the model (volume-wide, so slices agree): the user's
                                 # display window, or the volume's 0.5-99.5 % while Slicer's is automatic


@dataclass
class SlicePrediction:
    """A mask for one slice (or oblique plane), not yet written: the effect's preview."""
    volume_key: str
    geometry: object             # geo.SliceGeometry or geo.ObliquePlane
    mask: np.ndarray             # (H, W) bool, in the slice image's (x, y) layout
    score: float
    logits: np.ndarray | None    # (256, 256) low-res logits; feed back as mask_logits to refine
    points_xy: np.ndarray | None = None
    labels: np.ndarray | None = None
    box_xy: tuple | None = None
    notes: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def cache_key(self):
        return self.geometry.key(self.volume_key)


@dataclass
class SeedChoices:
    """The seed check of a preview (the core's ``sonosam.seed_check``): what is wrong with the model's
    answer, and the alternatives as previews the user can look at and apply (then propagate from)."""
    problems: list                 # [] when the answer agrees with the box
    summary: str                   # one line for the status label ("" when fine)
    choices: list                  # [SlicePrediction]: the preview itself first, then the alternatives
    labels: list                   # one short line per choice, for a list widget
    suggested: int = 0             # the one the core would propagate from (0: the model's answer)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class PropagationPlan:
    """What a propagation reads from MRML before the model runs (in-process or as a server job), and what
    ``finish_propagation`` needs to write the result back."""
    segmentation_node: object
    segment_id: str
    volume_node: object
    volume_key: str
    key: tuple                   # the logic's memory of the last run for this segment, volume and layout
    layout: object               # geo.SliceGeometry of slice 0: stack <-> volume
    stack: np.ndarray            # (n, H, W) the volume as slices, laid out as the view shows them
    seg_stack: np.ndarray        # (n, H, W) bool, the segment now
    current: np.ndarray          # (K, J, I) bool, the segment now, in volume voxels
    image_to_seg: np.ndarray
    extent: list
    seed_indices: list
    previous: object             # the last PropagationResult to continue, or None
    written_before: set
    options: dict                # direction, max_slices, carrier, span
    volume_id: str
    window: tuple | None
    note: str = ""               # said after the result's summary (a segmentation grid tilted against the volume)

    def seeds(self):
        from sonosam.volume import Seed

        return [Seed(s, mask=self.seg_stack[s].copy()) for s in self.seed_indices]


@dataclass
class PropagationRun:
    """What the logic remembers of a finished propagation, to continue from it: the core's result, its options,
    the slices it wrote, and the segment's stack before and after (as it reads back: the Segment Editor's masking
    may have kept some of the result out)."""
    result: object
    options: dict
    written: set
    packed: tuple   # the stacks before and after, bit-packed (a whole volume's masks, kept for a while)

    @classmethod
    def of(cls, result, options, written, before, after):
        return cls(result, options, set(written), (np.packbits(before, axis=-1), np.packbits(after, axis=-1),
                                                   before.shape[-1]))

    @property
    def before(self) -> np.ndarray:
        return np.unpackbits(self.packed[0], axis=-1, count=self.packed[2]).astype(bool)

    @property
    def after(self) -> np.ndarray:
        return np.unpackbits(self.packed[1], axis=-1, count=self.packed[2]).astype(bool)

    def undone(self, now) -> bool:
        """Whether the segment is back where it was before this run (Undo): none of the slices it changed still
        holds what it wrote, and more are as they were than hold a new drawing. A slice the user erased among
        slices still as it wrote them, or beside slices they corrected, is an end the next run keeps, not an undo."""
        before, after = self.before, self.after
        changed = [s for s in range(len(before)) if not np.array_equal(after[s], before[s])]
        if any(np.array_equal(now[s], after[s]) for s in changed):
            return False
        back = sum(np.array_equal(now[s], before[s]) for s in changed)
        return back > len(changed) - back


KEEP_RUNS = 2   # per segment, volume and layout: after undoing the last run, Propagate continues the one before


# ---------------------------------------------------------------------------------------------------
# MRML helpers (work on any scene: the real Slicer one or a headless slicer-core one)
# ---------------------------------------------------------------------------------------------------

def node_to_world(node) -> np.ndarray:
    """4x4 from the node's coordinates to world RAS (identity without a parent transform)."""
    import vtk

    parent = node.GetParentTransformNode() if node is not None else None
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputImageError(f"'{node.GetName()}' is under a non-linear transform ('{parent.GetName()}'); "
                              "harden the transform (Data module, right-click > Harden transform) first.")
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return slicer.util.arrayFromVTKMatrix(m)


def volume_array(volume_node) -> np.ndarray:
    """(K, J, I[, C]) numpy view on a volume node's voxels (as slicer.util.arrayFromVolume, scene-free)."""
    from vtk.util import numpy_support

    image = volume_node.GetImageData()
    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    comps = image.GetNumberOfScalarComponents()
    shape = tuple(reversed(dims)) + ((comps,) if comps > 1 else ())
    return numpy_support.vtk_to_numpy(scalars).reshape(shape)


def _segment_and_label(segmentation_node, segment_id):
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise SegmentationError("No segmentation selected: choose or create a segmentation node.")
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id) if segment_id else None
    if segment is None:
        names = [segmentation_node.GetSegmentation().GetNthSegmentID(i)
                 for i in range(segmentation_node.GetSegmentation().GetNumberOfSegments())]
        raise SegmentationError(f"Segment {segment_id!r} is not in '{segmentation_node.GetName()}' "
                                f"(segments: {', '.join(names) or 'none'}); add a segment first.")
    return segment


def read_segment_block(segmentation_node, segment_id, image_to_seg: np.ndarray, extent) -> np.ndarray:
    """The segment's voxels inside ``extent`` of a grid given by ``image_to_seg`` (grid IJK -> segmentation
    coordinates), as a (K, J, I) bool array; resampled (nearest) when the segmentation's own labelmap
    has another geometry. Shared labelmap layers are handled (only this segment's label value)."""
    import slicer
    from vtk.util import numpy_support

    segment = _segment_and_label(segmentation_node, segment_id)
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    out = np.zeros(shape, dtype=bool)
    labelmap = slicer.vtkOrientedImageData()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, labelmap, False):
        return out  # no labelmap yet (empty segment)
    ext = labelmap.GetExtent()
    if ext[0] > ext[1] or ext[2] > ext[3] or ext[4] > ext[5] or labelmap.GetPointData().GetScalars() is None:
        return out
    import vtk

    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    same_grid = np.allclose(slicer.util.arrayFromVTKMatrix(matrix), image_to_seg, atol=1e-6)
    if not same_grid:
        reference = slicer.vtkOrientedImageData()
        reference.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(image_to_seg))
        reference.SetExtent(*extent)
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, True)
        labelmap = resampled
        ext = labelmap.GetExtent()
        if ext[0] > ext[1] or labelmap.GetPointData().GetScalars() is None:
            return out
    full = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
        ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    lo = [max(extent[2 * a], ext[2 * a]) for a in range(3)]
    hi = [min(extent[2 * a + 1], ext[2 * a + 1]) for a in range(3)]
    if any(lo[a] > hi[a] for a in range(3)):
        return out
    src = full[lo[2] - ext[4]:hi[2] - ext[4] + 1, lo[1] - ext[2]:hi[1] - ext[2] + 1, lo[0] - ext[0]:hi[0] - ext[0] + 1]
    out[lo[2] - extent[4]:hi[2] - extent[4] + 1, lo[1] - extent[2]:hi[1] - extent[2] + 1,
        lo[0] - extent[0]:hi[0] - extent[0] + 1] = src == segment.GetLabelValue()
    return out


def editor_writer(editor_node=None, write=None, before_first_write=None):
    """The one way this logic changes a segment: Slicer's Segment Editor rule
    ``vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap``, which honours the editor node's masking
    (editable area, editable intensity range, "modify other segments").

    ``editor_node``: a ``vtkMRMLSegmentEditorNode`` (in the scene, with the segmentation and source volume
    set when its masking needs them). None (console use): edit everywhere and never overwrite other segments.
    ``write``: the effect passes its ``scriptedEffect.modifySelectedSegmentByLabelmap`` call (same signature
    as the result), which delegates to the same C++ (Slicer 5.10+), with its own editor node.
    ``before_first_write(segmentation_node, segment_id)``: called once, just before the first change
    (``saveStateForUndo``: one undo step per action, none for an action that writes nothing; it may raise to
    refuse the write).
    Returns ``modify(segmentation_node, segment_id, labelmap, mode, extent)`` with mode "add" or "remove";
    ``modify.editor_node`` is the node whose masking applies.
    """
    import slicer

    if editor_node is None:
        editor_node = slicer.vtkMRMLSegmentEditorNode()
        editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    if write is None:
        logic = slicer.vtkSlicerSegmentEditorLogic()
        if editor_node.GetScene() is not None:
            logic.SetMRMLScene(editor_node.GetScene())
        logic.SetSegmentEditorNode(editor_node)
        modes = {"add": logic.ModificationModeAdd, "remove": logic.ModificationModeRemove}

        def write(segmentation_node, segment_id, labelmap, mode, extent):
            logic.ModifySegmentByLabelmap(segmentation_node, segment_id, labelmap, modes[mode], list(extent), True,
                                          False)

    pending = [before_first_write] if before_first_write is not None else []

    def before_change(segmentation_node, segment_id):
        while pending:
            pending.pop()(segmentation_node, segment_id)

    def modify(segmentation_node, segment_id, labelmap, mode, extent):
        before_change(segmentation_node, segment_id)
        write(segmentation_node, segment_id, labelmap, mode, extent)

    modify.editor_node = editor_node  # keeps the node (and so its settings) alive with the function
    modify.before_change = before_change   # for a change made otherwise (a new segment), e.g. by Auto
    return modify


def write_segment_block(segmentation_node, segment_id, block_kji: np.ndarray, image_to_seg: np.ndarray, extent,
                        current_kji: np.ndarray | None = None, modify=None, erase: bool = False):
    """Make the segment equal ``block_kji`` inside ``extent`` (nothing outside it changes), through
    ``modify`` (``editor_writer()``'s; default: ``editor_writer()``): an "add" of the voxels to gain and a
    "remove" of the voxels to lose, each limited to the extent, so the Segment Editor's masking decides what
    may change. Returns True when something was to be written.

    With the editable area "inside segment X", Slicer's remove is its Erase: it may remove the segment's
    voxels outside X and gives them to X. That suits an explicit removal (``erase=True``: splitting X by
    painting), not a replace, which like Slicer's own "set" must leave the segment outside X as it is and
    never grow X: so by default the removals are limited to X.
    """
    import slicer
    import vtk
    from vtk.util import numpy_support

    _segment_and_label(segmentation_node, segment_id)
    _require_in_scene(segmentation_node)
    block = np.ascontiguousarray(block_kji, dtype=bool)
    if current_kji is None:
        current_kji = read_segment_block(segmentation_node, segment_id, image_to_seg, extent)
    modify = modify or editor_writer()
    removals = current_kji & ~block
    mask_segment = _single_mask_segment(getattr(modify, "editor_node", None), segmentation_node)
    if erase:
        mask_segment = None
    if mask_segment is not None and removals.any():
        removals &= read_segment_block(segmentation_node, mask_segment, image_to_seg, extent)
    changes = [("add", block & ~current_kji), ("remove", removals)]
    changes = [(mode, voxels) for mode, voxels in changes if voxels.any()]
    if not changes:
        return False
    reference = _reference_geometry(segmentation_node)
    if reference is not None and _same_grid(reference, image_to_seg):
        reference = None
    writes = []   # all prepared before the first write: a refusal leaves the segment as it was
    for mode, voxels in changes:
        labelmap = slicer.vtkOrientedImageData()
        labelmap.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(image_to_seg))
        labelmap.SetExtent(*extent)
        labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())[:] = voxels.view(np.uint8).ravel()
        modification_extent = list(extent)
        if reference is not None:
            # the segmentation's own grid differs from the volume's: the editor's masking (intensity range)
            # is computed on that grid and refuses a modifier on another one, so resample it there (nearest)
            resampled = slicer.vtkOrientedImageData()
            slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                labelmap, reference, resampled, False, False)
            if not numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).any():
                raise SegmentationError(
                    f"'{segmentation_node.GetName()}' has a coarser geometry than the volume, and this change falls "
                    "between its voxels, so nothing would be written: set its geometry to the source volume "
                    "(Segment Editor > Specify geometry), then try again; nothing was written.")
            labelmap, modification_extent = resampled, list(resampled.GetExtent())
            if mode == "remove" and mask_segment is not None:   # limited to X again, on the grid Slicer uses
                _keep_inside_segment(labelmap, segmentation_node, mask_segment)
        writes.append((mode, labelmap, modification_extent))
    for mode, labelmap, modification_extent in writes:
        modify(segmentation_node, segment_id, labelmap, mode, modification_extent)
    return True


def _require_in_scene(segmentation_node):
    """A job that ended after its segmentation was deleted or the scene closed writes nothing."""
    if segmentation_node.GetScene() is None:
        raise SegmentationError(f"'{segmentation_node.GetName()}' is no longer in the scene (deleted, or the scene "
                                "was closed): nothing was written.")


def _single_mask_segment(editor_node, segmentation_node):
    """The segment X of the editable area "inside segment X", or None for any other editable area; refused
    when X is gone (Slicer would then write nothing, silently)."""
    import slicer

    if editor_node is None or editor_node.GetMaskMode() != slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment:
        return None
    mask_segment = editor_node.GetMaskSegmentID() or None
    if mask_segment is not None and segmentation_node.GetSegmentation().GetSegment(mask_segment) is None:
        raise SegmentationError(f"The editable area is 'inside segment {mask_segment}', which is not in "
                                f"'{segmentation_node.GetName()}': choose another editable area (Segment Editor > "
                                "Masking); nothing was written.")
    return mask_segment


def _keep_inside_segment(labelmap, segmentation_node, segment_id):
    """Clear ``labelmap``'s voxels outside the segment, read on the labelmap's own grid."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    inside = read_segment_block(segmentation_node, segment_id, slicer.util.arrayFromVTKMatrix(matrix),
                                list(labelmap.GetExtent()))
    numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())[~inside.ravel()] = 0


def _reference_geometry(segmentation_node):
    """The segmentation's reference image geometry (its labelmaps' grid), or None when it has none."""
    import slicer

    text = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if not text:
        return None
    reference = slicer.vtkOrientedImageData()
    if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, reference, False):
        return None
    return reference


def _tilted_grid(segmentation_node, image_to_seg: np.ndarray) -> bool:
    """Whether the segmentation's own grid is tilted against the volume's (their axes not parallel): a slice drawn
    on the volume then lands on several of the volume's slices as it reads back."""
    import vtk

    reference = _reference_geometry(segmentation_node)
    if reference is None:
        return False
    matrix = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(matrix)
    volume_to_grid = (np.linalg.inv(slicer.util.arrayFromVTKMatrix(matrix)) @ image_to_seg)[:3, :3]
    columns = np.abs(volume_to_grid) / np.linalg.norm(volume_to_grid, axis=0)
    return not np.allclose(np.sort(columns, axis=0)[:2], 0, atol=1e-3)


def _same_grid(image, image_to_seg: np.ndarray) -> bool:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return np.allclose(slicer.util.arrayFromVTKMatrix(matrix), image_to_seg, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# The logic
# ---------------------------------------------------------------------------------------------------

class SegmentLogic:
    """MRML in, MRML out; the model work is the core's ``Predictor``.

    ``predictor`` may be any object with ``predict(image, prompts, multimask=, key=, window=)``
    (``prompts`` a ``sonosam.prompts.Prompts``; the core's Predictor or the server client) returning
    something with ``mask``, ``score``, ``logits`` (and optionally ``prefetch`` /
    ``model.spec.prompt_kinds``); by default the core's Predictor with ``model`` is built on first use.
    """

    def __init__(self, model: str = "litemedsam_clicks", checkpoint=None, device=None, cache_mib: float = 1024,
                 predictor=None, backend: str = "auto", in_process: bool = True):
        self.in_process = in_process  # False (the Slicer GUI): never load a model here, use set_predictor(client)
        self.model_name = model
        self.checkpoint = checkpoint
        self.device = device
        self.backend = backend   # "auto": ONNX Runtime on CPU (exported once, cached), eager on GPU
        self.cache_mib = cache_mib
        self._predictor = predictor
        self._windows: dict[str, tuple | None] = {}
        self._last: dict[tuple, SlicePrediction] = {}  # (seg node ID, segment ID, slice key) -> last written
        self._propagations: dict[tuple, list[PropagationRun]] = {}   # plan key -> the latest runs, newest last
        self.last_propagation = None
        self.last_evaluation = None
        self._assist = None      # SAM^assist: the predictor with a learned prompt encoder (learn_from_segment)
        self.assist_info = None  # what it learned from (AssistInfo), shown by the module
        self.last_timings: dict = {}
        self.modify = None  # how segments are written (None: editor_writer(), console defaults); see apply()

    # -- model ---------------------------------------------------------------------------------------
    @property
    def request_timeout(self):
        """Seconds a request this logic makes for the GUI thread may take (the Slicer GUI's logic,
        ``in_process=False``: a poll's, GUI_POLL_SECONDS; elsewhere the client's own)."""
        return None if self.in_process else _gui_seconds()

    @property
    def predictor(self):
        """The predictor every call uses: the assisted one after ``learn_from_segment``, else the base."""
        base = self.base_predictor
        return self._assist if self._assist is not None else base

    @property
    def interactive_predictor(self):
        """What the user's prompts go through: the assisted predictor after ``learn_from_segment``, else the base
        with its model's box scales (sonosam.zoom.interactive_predictor; a server applies its own)."""
        if self._assist is not None:
            return self._assist
        from sonosam.zoom import interactive_predictor

        return interactive_predictor(self.base_predictor)

    @property
    def base_predictor(self):
        if self._predictor is None:
            if not self.in_process:
                raise NotConnectedError("SonoSAM's server is not connected: start the local server or connect to "
                                        "a remote one in the SonoSAM Segment module.")
            try:
                from sonosam.models import load_model
                from sonosam.predictor import Predictor
            except ImportError as error:
                raise MissingDependencyError(
                    f"SonoSAM's Python dependencies are not installed in this Python ({error}): run "
                    "`pip install sonosam`, or use a SonoSAM server (SegmentLogic.set_predictor(client)).") from error
            model = load_model(self.model_name, checkpoint=self.checkpoint, device=self.device, backend=self.backend)
            self._predictor = Predictor(model, cache_mib=self.cache_mib)
        return self._predictor

    def set_model(self, model: str = "litemedsam_clicks", checkpoint=None, device=None, cache_mib: float | None = None,
                  backend: str | None = None):
        """Switch model/device/cache budget/backend; the model is (re)loaded on next use."""
        if self._predictor is not None and hasattr(self._predictor, "close"):
            self._predictor.close()
        self.model_name, self.checkpoint, self.device = model, checkpoint, device
        if cache_mib is not None:
            self.cache_mib = cache_mib
        if backend is not None:
            self.backend = backend
        self._predictor = None
        self._last.clear()
        self._propagations.clear()
        self.use_base_model()

    def set_predictor(self, predictor):
        """Use this predictor (a ``sonosam.client.SonoSAMClient`` for a server, or an in-process one);
        what was remembered about the previous model (last answers, propagation runs, a learned prompt
        encoder) is dropped."""
        if predictor is self._predictor:
            return
        self._predictor = predictor
        self._last.clear()
        self._propagations.clear()
        self.use_base_model()

    def use_base_model(self):
        """Back to the base model after ``learn_from_segment`` (the learned prompt encoder is dropped here)."""
        self._assist = None
        self.assist_info = None

    def prompt_kinds(self) -> frozenset:
        model = getattr(self.predictor, "model", None)
        spec = getattr(model, "spec", None)
        return frozenset(getattr(spec, "prompt_kinds", {"point", "box", "mask"}))

    # -- volume --------------------------------------------------------------------------------------
    def volume_info(self, volume_node) -> VolumeInfo:
        import vtk

        if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
            raise NoVolumeError("No volume selected: choose the volume to segment (Source volume).")
        image = volume_node.GetImageData()
        if image is None or image.GetPointData().GetScalars() is None:
            raise NoVolumeError(f"Volume '{volume_node.GetName()}' has no voxels loaded.")
        comps = image.GetNumberOfScalarComponents()
        if comps not in (1, 3, 4) or (comps > 1 and not volume_node.IsA("vtkMRMLVectorVolumeNode")):
            raise InputImageError(
                f"Volume '{volume_node.GetName()}' has {comps} values per voxel (a 4D / multi-volume): pick one "
                "frame or component as a scalar volume (e.g. Sequences or Vector to Scalar Volume) first.")
        if volume_node.IsA("vtkMRMLVectorVolumeNode") and comps not in (3, 4):
            raise InputImageError(f"Volume '{volume_node.GetName()}' is not a scalar or RGB volume.")
        ijk = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(ijk)
        ijk_to_world = node_to_world(volume_node) @ slicer.util.arrayFromVTKMatrix(ijk)
        if not abs(np.linalg.det(ijk_to_world[:3, :3])) > 1e-12:
            raise InputImageError(f"Volume '{volume_node.GetName()}' has a flat geometry (a zero spacing, or a transform "
                                  "that scales it to nothing): fix its spacing (Volumes > Volume Information) or its "
                                  "transform.")
        array = volume_array(volume_node)
        key = f"{volume_node.GetID()}@{image.GetMTime()}"
        # the key names the pixels only: a window changed to look at a preview must not void the preview (the
        # embedding caches are keyed by the window as well)
        window = self._display_window(volume_node) if comps == 1 else None
        if window is None and key not in self._windows:
            self._windows = {k: v for k, v in self._windows.items() if not k.startswith(volume_node.GetID() + "@")}
            self._windows[key] = self._volume_window(array)
        return VolumeInfo(volume_node.GetID(), array, ijk_to_world, tuple(image.GetDimensions()), key,
                          window if window is not None else self._windows[key])

    @staticmethod
    def _display_window(volume_node):
        """The window the user set for this volume in Slicer (window/level in the Volumes module or a slice view,
        a preset such as CT-Brain, a DICOM window), so that the model sees what the user sees; None while Slicer
        chooses the window itself (automatic window/level)."""
        display = volume_node.GetDisplayNode()
        if display is None or not display.IsA("vtkMRMLScalarVolumeDisplayNode") or display.GetAutoWindowLevel():
            return None
        low, high = float(display.GetWindowLevelMin()), float(display.GetWindowLevelMax())
        return (low, high) if high > low else None

    @staticmethod
    def _volume_window(array: np.ndarray):
        """One window for the whole volume (0.5-99.5 percentiles), so every slice is scaled alike; uint8
        volumes as they are; while Slicer's window/level is automatic (``_display_window`` otherwise). Not yet the
        core's sonosam.image.volume_window, which windows uint8 volumes too (issue 12: one rule for both, once the
        slow suite can re-measure propagation on uint8 volumes)."""
        if array.dtype == np.uint8:
            return None
        sample = array.reshape(-1)[:: max(1, array.size // 2_000_000)]
        if np.issubdtype(sample.dtype, np.floating):
            sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            return None
        low, high = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
        if high <= low:
            low, high = float(sample.min()), float(sample.max())
        return (low, high) if high > low else None

    # -- geometry ------------------------------------------------------------------------------------
    def _to_ijk_checked(self, info: VolumeInfo, points_ras, what: str) -> np.ndarray:
        ijk = geo.ras_to_ijk(points_ras, info.ijk_to_world)
        dims = np.asarray(info.dims_ijk)
        outside = np.any((ijk < -0.5) | (ijk > dims - 0.5), axis=1)
        if outside.any():
            bad = np.atleast_2d(points_ras)[outside][0]
            lo = geo.ijk_to_ras([[-0.5, -0.5, -0.5]], info.ijk_to_world)[0]
            hi = geo.ijk_to_ras([dims - 0.5], info.ijk_to_world)[0]
            raise PromptError(f"{what} at RAS ({bad[0]:.1f}, {bad[1]:.1f}, {bad[2]:.1f}) is outside the volume "
                              f"(its corners are at RAS {np.round(lo, 1).tolist()} and {np.round(hi, 1).tolist()}); "
                              "click inside the image.")
        return ijk

    def slice_geometry(self, volume_node, sliceAxis="axial", points_ras=None, box_ras=None, sliceIndex=None,
                       sliceToRAS=None, info: VolumeInfo | None = None):
        """The slice the prompts lie on: a ``SliceGeometry`` (voxel slice) or an ``ObliquePlane``.

        ``sliceToRAS`` (a slice view's 4x4) wins over ``sliceAxis``: an aligned view gives a voxel slice
        shown in that view's orientation, an oblique one a resampled plane through the view's origin.
        """
        info = info or self.volume_info(volume_node)
        prompts = [np.atleast_2d(np.asarray(p, float)) for p in (points_ras, box_ras) if p is not None and len(p)]
        prompt_ras = np.vstack(prompts) if prompts else np.zeros((0, 3))
        if prompt_ras.shape[1:] != (3,):
            raise PromptError(f"Prompts must be RAS points (x, y, z); got an array of shape {prompt_ras.shape}.")
        if not np.isfinite(prompt_ras).all():
            raise PromptError("A prompt point is not a point in space (NaN or infinite): give finite RAS coordinates.")
        # clicks must be inside the volume; a box may reach past its edge in the slice's plane (cut to the image
        # in _prompts_xy), not off the volume's slices
        n_points = len(prompt_ras) - (len(prompts[-1]) if box_ras is not None and len(box_ras) else 0)
        prompt_ijk = geo.ras_to_ijk(prompt_ras, info.ijk_to_world) if len(prompt_ras) else prompt_ras
        if n_points:
            self._to_ijk_checked(info, prompt_ras[:n_points], "The prompt")
        try:
            if sliceToRAS is not None:
                s = np.asarray(sliceToRAS, float)
                axis, cos = geo.axis_for_normal(info.ijk_to_world, s[:3, 2] if np.linalg.norm(s[:3, 2]) > 0
                                                else np.cross(s[:3, 0], s[:3, 1]))
                if cos < geo.ALIGNED_COS:   # a box may reach past the volume here too (cut in _prompts_xy)
                    plane = geo.make_oblique_plane(info.ijk_to_world, info.dims_ijk, s)
                    if len(prompt_ras):
                        w = plane.ras_to_xyw(prompt_ras)[:, 2]
                        tolerance = 0.5 * float(np.abs(info.ijk_to_world[:3, :3].T @ plane.normal).max())
                        if np.abs(w).max() > tolerance:
                            raise PromptError("The prompts are not on the slice plane of this view.")
                    return plane
                right, up = s[:3, 0], s[:3, 1]
                if sliceIndex is None and not len(prompt_ras):
                    sliceIndex = int(np.round(geo.ras_to_ijk(s[:3, 3], info.ijk_to_world)[0, axis]))
            else:
                axis, right, up = geo.resolve_axis(info.ijk_to_world, sliceAxis)
            if len(prompt_ras) > n_points:   # the box's slice is one of the volume's
                along = prompt_ijk[n_points:, axis]
                if np.any((along < -0.5) | (along > info.dims_ijk[axis] - 0.5)):
                    self._to_ijk_checked(info, prompt_ras[n_points:], "The box")
            if len(prompt_ras):
                on = geo.slice_index_for_points(prompt_ijk, axis, info.dims_ijk)
                if sliceIndex is not None and int(sliceIndex) != on:
                    raise PromptError(f"The prompts lie on slice {on} along {geo.AXIS_NAMES[axis]}, not on slice "
                                      f"{int(sliceIndex)}: leave sliceIndex out, or give prompts on that slice.")
                sliceIndex = on
            elif sliceIndex is None:
                raise PromptError("No prompt: give points_ras or box_ras (or a slice index).")
            return geo.make_slice_geometry(info.ijk_to_world, info.dims_ijk, axis, int(sliceIndex), right, up)
        except geo.GeometryError as error:
            raise PromptError(str(error)) from error

    def slice_image(self, info: VolumeInfo, geometry) -> np.ndarray:
        if isinstance(geometry, geo.ObliquePlane):
            if info.array.ndim == 4:
                return np.stack([geometry.sample(info.array[..., c], info.ijk_to_world) for c in range(3)], -1)
            return geometry.sample(info.array, info.ijk_to_world)
        return geometry.extract(info.array)

    def _prompts_xy(self, info, geometry, points_ras, labels, box_ras):
        points_xy = labels_out = box_xy = None
        if points_ras is not None and len(points_ras):
            pts = np.atleast_2d(np.asarray(points_ras, float))
            if isinstance(geometry, geo.ObliquePlane):
                points_xy = geometry.ras_to_xyw(pts)[:, :2]
            else:
                points_xy = geometry.ijk_to_xy(geo.ras_to_ijk(pts, info.ijk_to_world))
            labels_out = np.ones(len(pts), int) if labels is None else np.asarray(labels, int).reshape(-1)
            if len(labels_out) != len(points_xy):
                raise PromptError(f"Got {len(points_xy)} points but {len(labels_out)} labels; give one label per "
                                  "point (1 = inside, 0 = outside).")
        if box_ras is not None and len(box_ras):
            corners = np.atleast_2d(np.asarray(box_ras, float))
            if corners.shape != (2, 3):
                raise PromptError("box_ras must be two opposite corners [[r, a, s], [r, a, s]] on the slice.")
            if isinstance(geometry, geo.ObliquePlane):
                cxy = geometry.ras_to_xyw(corners)[:, :2]
            else:
                cxy = geometry.ijk_to_xy(geo.ras_to_ijk(corners, info.ijk_to_world))
            height, width = geometry.shape
            x0, y0 = np.maximum(cxy.min(0), 0.0)   # a box reaching past the image: its part on the image
            x1, y1 = np.minimum(cxy.max(0), [width - 1.0, height - 1.0])
            if x1 - x0 < 1 or y1 - y0 < 1:
                raise PromptError("The box is less than one voxel wide on this slice (or off the image): drag a "
                                  "larger box over the structure.")
            if isinstance(geometry, geo.ObliquePlane) and not self._box_meets_volume(info, geometry, x0, y0, x1, y1):
                raise PromptError("The box is off the volume on this view: drag it over the image.")
            box_xy = (float(x0), float(y0), float(x1), float(y1))
        return points_xy, labels_out, box_xy

    @staticmethod
    def _box_meets_volume(info, plane, x0, y0, x1, y1) -> bool:
        """Whether an oblique view's box (pixels) holds a point of the volume: the plane's image is the volume's
        bounding rectangle on it, so its corners lie outside the volume."""
        xs, ys = np.meshgrid(np.linspace(x0, x1, 33), np.linspace(y0, y1, 33))
        ijk = geo.ras_to_ijk(plane.xy_to_ras(np.c_[xs.ravel(), ys.ravel()]), info.ijk_to_world)
        return bool(np.all((ijk >= -0.5) & (ijk <= np.asarray(info.dims_ijk) - 0.5), axis=1).any())

    # -- predict (preview) ---------------------------------------------------------------------------
    def predict(self, volumeNode, points_ras=None, labels=None, box_ras=None, sliceAxis="axial", sliceIndex=None,
                sliceToRAS=None, mask_logits=None, segmentationNode=None, segmentId=None, refine: bool = True,
                multimask: bool = False) -> SlicePrediction:
        """Segment one slice from RAS prompts; nothing is written (use ``apply`` or ``segment``).

        With ``refine`` and a segment given, an existing mask of that segment on this slice is passed to
        the model as its mask prompt (the model's own logits when the segment still holds its last answer).
        """
        t0 = time.perf_counter()
        info = self.volume_info(volumeNode)
        geometry = self.slice_geometry(volumeNode, sliceAxis, points_ras, box_ras, sliceIndex, sliceToRAS, info)
        points_xy, labels_xy, box_xy = self._prompts_xy(info, geometry, points_ras, labels, box_ras)
        if points_xy is None and box_xy is None and mask_logits is None:
            raise PromptError("No prompt: give points_ras (with labels) or box_ras.")
        image = self.slice_image(info, geometry)
        if mask_logits is None and refine and segmentationNode is not None and segmentId:
            mask_logits = self._refinement_logits(info, geometry, segmentationNode, segmentId)
        if box_xy is None and mask_logits is None and not np.any(np.asarray(labels_xy) == 1):
            # SAM answers a lone negative click with a blob around it: the very spot the user excluded
            raise PromptError("A negative click alone does not say what to segment: click inside the structure "
                              "(or drag a box) first.")
        prompts = Prompts(points_xy, labels_xy, box_xy, mask_logits)
        t1 = time.perf_counter()
        result = self.interactive_predictor.predict(image, prompts, multimask=multimask,
                                                    key=geometry.key(info.key), window=info.window)
        t2 = time.perf_counter()
        mask = np.asarray(result.mask, dtype=bool)
        if mask.shape != image.shape[:2]:
            raise SonoSAMError(f"The model returned a {mask.shape} mask for a {image.shape[:2]} slice.")
        return SlicePrediction(info.key, geometry, mask, float(result.score), getattr(result, "logits", None),
                               points_xy, labels_xy, box_xy, list(getattr(result, "notes", []) or []),
                               {"prepare_s": t1 - t0, "model_s": t2 - t1})

    def seed_choices(self, volumeNode, prediction: SlicePrediction) -> SeedChoices:
        """Check a boxed preview against its box (``sonosam.seed_check.check_seed`` through the user's route, so that
        it judges the preview as shown: a mask beside the structure the box holds, a mask filling the box, an unsure
        model) and offer the alternatives: the model's other masks where it has trained multimask heads, the model
        with a click inside the box's contrasted structure (click-capable models), the box's darker or brighter part,
        the darkest and brightest of its three intensity classes (never suggested); for a preview of clicks alone, the
        region the first positive click is in (two and three intensity classes of the slice; never suggested: one
        click does not say how much of a tissue is meant). Each choice is a SlicePrediction for ``show_preview`` /
        ``apply``; applying one and propagating seeds the propagation with it. Previews with no box and no positive
        click, and colour slices, are not checked (one choice: the preview)."""
        info = self.volume_info(volumeNode)
        if prediction.volume_key != info.key:
            raise SegmentationError("The volume changed since this preview: prompt again.")
        image = self.slice_image(info, prediction.geometry)
        clicked = prediction.labels is not None and any(int(v) for v in prediction.labels)
        if (prediction.box_xy is None and not clicked) or image.ndim != 2:
            return SeedChoices([], "", [prediction], ["the model's answer"])
        from sonosam.seed_check import check_seed

        points = None if prediction.points_xy is None else [tuple(p) for p in np.asarray(prediction.points_xy)]
        labels = None if prediction.labels is None else [int(v) for v in prediction.labels]
        check = check_seed(self.interactive_predictor, image, box=prediction.box_xy, points=points, labels=labels,
                           key=prediction.cache_key, window=info.window)
        choices, names = [prediction], ["the model's answer"]
        for candidate in check.candidates[1:]:
            notes = [candidate.source] + [f"problem: {p}" for p in candidate.problems]
            choices.append(SlicePrediction(info.key, prediction.geometry, np.asarray(candidate.mask, bool),
                                           float(candidate.score), candidate.logits, prediction.points_xy,
                                           prediction.labels, prediction.box_xy, notes))
            names.append(candidate.source + (" (suggested)" if len(names) == check.best else ""))
        return SeedChoices(list(check.problems), "" if check.ok else check.summary(), choices, names, check.best)

    def _refinement_logits(self, info, geometry, segmentation_node, segment_id):
        if isinstance(geometry, geo.ObliquePlane) or "mask" not in self.prompt_kinds():
            return None
        if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
            return None
        current = self.read_slice_mask(segmentation_node, segment_id, info, geometry)
        if not current.any():
            return None
        last = self._last.get((segmentation_node.GetID(), segment_id, geometry.key(info.key)))
        if last is not None and last.logits is not None and np.array_equal(last.mask, current):
            return last.logits
        try:
            from sonosam.models import mask_to_logits
        except ImportError:  # the model runs in a server; this Python has no torch: no mask prompt from here
            return None
        return mask_to_logits(current)

    # -- write ---------------------------------------------------------------------------------------
    def _grid_to_segmentation(self, info: VolumeInfo, segmentation_node) -> np.ndarray:
        """Volume IJK -> segmentation-node coordinates (the labelmap frame SetBinaryLabelmapToSegment takes)."""
        to_world = node_to_world(segmentation_node)
        if not abs(np.linalg.det(to_world[:3, :3])) > 1e-12:
            raise SegmentationError(f"'{segmentation_node.GetName()}' is under a transform that scales it to nothing: "
                                    "fix or remove that transform (Transforms module).")
        return np.linalg.inv(to_world) @ info.ijk_to_world

    def _ensure_reference_geometry(self, segmentation_node, volume_node):
        import slicer

        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        segmentation = segmentation_node.GetSegmentation()
        has_geometry = segmentation_node.GetNodeReference(role) is not None or bool(
            segmentation.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()))
        if not has_geometry:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)

    def read_slice_mask(self, segmentation_node, segment_id, info: VolumeInfo, geometry) -> np.ndarray:
        """The segment on this slice, in the slice image's (x, y) layout."""
        image_to_seg = self._grid_to_segmentation(info, segmentation_node)
        if isinstance(geometry, geo.ObliquePlane):
            extent, voxels, px, py = geometry.voxel_footprint(info.ijk_to_world, info.dims_ijk)
            hit = read_segment_block(segmentation_node, segment_id, image_to_seg, extent)[voxels]
            out = np.zeros(geometry.shape, bool)
            out[py[hit], px[hit]] = True
            return out
        block = read_segment_block(segmentation_node, segment_id, image_to_seg, geometry.extent)
        return geometry.from_block(block)

    def apply(self, prediction: SlicePrediction, volumeNode, segmentationNode, segmentId, mode: str = "replace",
              modify=None):
        """Write a prediction into the segment: only the prediction's slice (or plane) changes, through
        ``modify`` (see ``editor_writer``: the effect passes its masking-aware writer)."""
        if mode not in MODES:
            raise SegmentationError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
        t0 = time.perf_counter()
        info = self.volume_info(volumeNode)
        if info.key != prediction.volume_key:
            raise SegmentationError("The volume changed since this preview was computed; click again.")
        _segment_and_label(segmentationNode, segmentId)
        self._ensure_reference_geometry(segmentationNode, volumeNode)
        image_to_seg = self._grid_to_segmentation(info, segmentationNode)
        geometry = prediction.geometry
        if isinstance(geometry, geo.ObliquePlane):
            extent, voxels, px, py = geometry.voxel_footprint(info.ijk_to_world, info.dims_ijk)
            current = read_segment_block(segmentationNode, segmentId, image_to_seg, extent)
            on_plane = prediction.mask[py, px]
            new = current.copy()
            if mode == "replace":
                new[voxels] = on_plane
            elif mode == "add":
                new[voxels] |= on_plane
            else:
                new[voxels] &= ~on_plane
        else:
            extent = geometry.extent
            current = read_segment_block(segmentationNode, segmentId, image_to_seg, extent)
            mask_block = geometry.to_block(prediction.mask).astype(bool)
            new = mask_block if mode == "replace" else (current | mask_block if mode == "add" else current & ~mask_block)
        changed = write_segment_block(segmentationNode, segmentId, new, image_to_seg, extent, current,
                                      modify or self.modify, erase=mode == "remove")
        self._last[(segmentationNode.GetID(), segmentId, prediction.cache_key)] = prediction
        prediction.timings["write_s"] = time.perf_counter() - t0
        return changed

    def segment(self, volumeNode, segmentationNode, segmentId, points_ras=None, labels=None, box_ras=None,
                sliceAxis="axial", mode: str = "replace", sliceIndex=None, sliceToRAS=None, refine: bool = True,
                mask_logits=None, modify=None) -> SlicePrediction:
        """Console API: segment the slice the prompts lie on and write it into ``segmentId``.

        ``points_ras``: [[r, a, s], ...] with ``labels`` (1 inside, 0 outside); ``box_ras``: two opposite
        corners; ``sliceAxis``: "axial"/"coronal"/"sagittal" (the volume axis closest to it), or "I"/"J"/"K";
        ``mode``: "replace" the segment on this slice, "add" to it, or "remove" from it.
        Returns the prediction (mask, score, timings); raises a ``SonoSAMError`` with a clear message.
        Like ``apply`` and ``propagate``, it saves no undo state: call the Segment Editor's
        ``saveStateForUndo()`` first if Ctrl+Z should undo it.
        """
        if mode not in MODES:
            raise SegmentationError(f"Unknown mode {mode!r}; use one of {', '.join(MODES)}.")
        _segment_and_label(segmentationNode, segmentId)
        t0 = time.perf_counter()
        prediction = self.predict(volumeNode, points_ras, labels, box_ras, sliceAxis, sliceIndex, sliceToRAS,
                                  mask_logits, segmentationNode, segmentId, refine and mode == "replace")
        self.apply(prediction, volumeNode, segmentationNode, segmentId, mode, modify)
        prediction.timings["total_s"] = time.perf_counter() - t0
        self.last_timings = dict(prediction.timings)
        return prediction

    def refine_segment(self, volumeNode, segmentationNode, segmentId, sliceAxis="axial", sliceIndex=None,
                       sliceToRAS=None, contextSegmentId=None, steps: int = 100, seed: int = 0,
                       timeout=None) -> SlicePrediction:
        """Zero-shot refiner (sonosam.refine, docs/seeds.md) on one slice: the segment's rough mask there is the
        coarse map, ``contextSegmentId`` (optional) the anatomy around it; no clicks. Nothing is written (use
        ``apply``). Runs as a server job when the model is on a server (waiting here; a GUI polls
        ``start_refine_segment``'s task instead), else in this process."""
        task = self.start_refine_segment(volumeNode, segmentationNode, segmentId, sliceAxis, sliceIndex, sliceToRAS,
                                         contextSegmentId, steps, seed)
        task.wait(timeout)
        return task.finish()

    def start_refine_segment(self, volumeNode, segmentationNode, segmentId, sliceAxis="axial", sliceIndex=None,
                             sliceToRAS=None, contextSegmentId=None, steps: int = 100, seed: int = 0) -> "RefineTask":
        """``refine_segment`` as a task for a GUI timer: ``poll()``, then ``finish()`` -> the preview."""
        info = self.volume_info(volumeNode)
        geometry = self.slice_geometry(volumeNode, sliceAxis, None, None, sliceIndex, sliceToRAS, info)
        image = self.slice_image(info, geometry)
        coarse = self.read_slice_mask(segmentationNode, segmentId, info, geometry)
        if not coarse.any():
            raise SegmentationError("The segment is empty on this slice: draw a rough outline of the structure first.")
        context = None if not contextSegmentId else \
            self.read_slice_mask(segmentationNode, contextSegmentId, info, geometry)
        return RefineTask(self, info, geometry, image, coarse, context, steps, seed, (segmentationNode, segmentId))

    # -- volume propagation and evaluation (the core does the work; this adapts MRML <-> arrays) ----------
    def _volume_stack(self, volumeNode, sliceAxis):
        """The volume as a stack of slices laid out as the slice view shows them (``geometry.stack``), so
        the model sees what the one-slice tool sees; returns (info, layout geometry, stack)."""
        info = self.volume_info(volumeNode)
        if info.array.ndim != 3:
            raise InputImageError(f"Volume '{volumeNode.GetName()}' is a colour volume; propagation and "
                                  "evaluation need a scalar volume (e.g. Vector to Scalar Volume first).")
        try:
            axis, right, up = geo.resolve_axis(info.ijk_to_world, sliceAxis)
            layout = geo.make_slice_geometry(info.ijk_to_world, info.dims_ijk, axis, 0, right, up)
        except geo.GeometryError as error:
            raise PromptError(str(error)) from error
        return info, layout, layout.stack(info.array)

    def slice_index(self, volumeNode, sliceAxis, ras) -> int:
        """The index along ``sliceAxis`` (the propagation's slice numbering) of the slice through RAS point
        ``ras``, e.g. a slice view's centre: what "between two slices" takes."""
        info = self.volume_info(volumeNode)
        try:
            axis, _, _ = geo.resolve_axis(info.ijk_to_world, sliceAxis)
        except geo.GeometryError as error:
            raise PromptError(str(error)) from error
        if not np.all(np.isfinite(np.asarray(ras, float)[:3])):
            raise PromptError(f"The position {list(ras)[:3]} is not a point in space: give finite RAS coordinates.")
        index = int(np.round(geo.ras_to_ijk(np.asarray(ras, float)[:3], info.ijk_to_world)[0, axis]))
        return int(np.clip(index, 0, info.dims_ijk[axis] - 1))

    @staticmethod
    def _stack_id(info, layout) -> str:
        """Names a volume's slice stack along one layout: in-process, the core keys its slices' embeddings
        ``(this, 0, index)`` (propagation, SAM^assist and Auto share them)."""
        return (f"{info.key}|{'IJK'[layout.axis]}{layout.x_axis}{layout.y_axis}"
                f"{int(layout.x_flip)}{int(layout.y_flip)}")

    def _segment_stack(self, info, layout, segmentationNode, segmentId):
        extent = [0, info.dims_ijk[0] - 1, 0, info.dims_ijk[1] - 1, 0, info.dims_ijk[2] - 1]
        image_to_seg = self._grid_to_segmentation(info, segmentationNode)
        current = read_segment_block(segmentationNode, segmentId, image_to_seg, extent)
        return current, layout.stack(current), image_to_seg, extent

    def propagate(self, volumeNode, segmentationNode, segmentId, sliceAxis="axial", seedSlices=None,
                  direction: str = "both", maxSlices=None, progress=None, cancel=None, modify=None,
                  carry: bool = True, span=None) -> str:
        """Carry the segment through the volume along ``sliceAxis`` with the core's ``sonosam.volume.propagate``.

        Seeds are the segment's slices along the axis, kept exactly (accepted masks): all its non-empty
        slices on a first run, or ``seedSlices`` (indices along the axis) when given. On a re-run, the
        slices the user changed since the last run (corrections, new slices) are new seeds, the earlier
        seeds stay anchors, and only the stretches next to what changed are recomputed; a slice the user
        erased is kept empty and ends the fronts that reach it. Only this segment
        is written, in one call of ``modify`` per change kind (one undo state: call ``saveStateForUndo()``
        before), and never on a seed slice. ``direction``: "both", "forward" (increasing index) or
        "backward"; ``maxSlices``: at most this many slices from each seed (None: until the structure ends);
        ``carry``: the slice decoder shipped for the model, if any, answers the propagated slices (the core's
        ``carrier="auto"``; False: the model answers every slice); ``span``: (first, last) slice index along the
        axis where the user says the structure starts and ends (the core's ``span``: no front runs past them);
        ``progress(done, total, info)`` and ``cancel`` (threading.Event or callable) go to the core; a
        cancelled run writes nothing and raises ``JobCancelledError``. Returns the result's summary. In-process; the effect runs the same plan as a server job
        (``plan_propagation`` -> job -> ``finish_propagation``).
        """
        try:
            from sonosam.volume import propagate as core_propagate
        except ImportError as error:
            raise MissingDependencyError(f"SonoSAM's core is not installed ({error}).") from error
        plan = self.plan_propagation(volumeNode, segmentationNode, segmentId, sliceAxis, seedSlices, direction,
                                     maxSlices, carry, span)
        result = core_propagate(self.predictor, plan.stack, plan.seeds(), axis=0, previous=plan.previous,
                                volume_id=plan.volume_id, progress=progress, cancel=cancel, window=plan.window,
                                **plan.options)
        return self.finish_propagation(plan, result, modify)

    def plan_propagation(self, volumeNode, segmentationNode, segmentId, sliceAxis="axial", seedSlices=None,
                         direction: str = "both", maxSlices=None, carry: bool = True,
                         span=None) -> PropagationPlan:
        """Everything ``propagate`` hands the core (the stack, the seeds, the previous run to continue),
        read from MRML now; nothing is written."""
        _segment_and_label(segmentationNode, segmentId)
        if direction not in ("both", "forward", "backward"):
            raise PromptError(f"Unknown direction {direction!r}; use both, forward or backward.")
        info, layout, stack = self._volume_stack(volumeNode, sliceAxis)
        current, seg_stack, image_to_seg, extent = self._segment_stack(info, layout, segmentationNode, segmentId)
        n = stack.shape[0]
        key = (segmentationNode.GetID(), segmentId, info.key, layout.axis, layout.x_axis, layout.y_axis,
               layout.x_flip, layout.y_flip)
        if span is not None:
            from sonosam.volume import check_span

            span = check_span(span, n, [])   # the seeds are checked below, in the effect's words
        options = {"direction": direction, "max_slices": None if maxSlices in (None, 0) else int(maxSlices),
                   "carrier": "auto" if carry else None, "span": span}
        filled = [s for s in range(n) if seg_stack[s].any()]
        previous, written_before = None, set()
        # the newest run not undone (Ctrl+Z): continue it; none: start afresh, as if they never ran
        last = next((run for run in reversed(self._propagations.get(key, [])) if not run.undone(seg_stack)), None)
        if seedSlices is not None:
            indices = sorted({int(s) for s in seedSlices})
            bad = [s for s in indices if not 0 <= s < n]
            if bad:
                raise PromptError(f"Seed slice {bad[0]} is outside 0..{n - 1} along this axis.")
            empty = [s for s in indices if not seg_stack[s].any()]
            if empty:
                raise PromptError(f"Seed slice {empty[0]} of the segment is empty: draw or accept it first.")
        elif last is not None:
            prev_result, prev_options, written_before = last.result, last.options, last.written
            # every changed slice is a new anchor: a correction, or a slice the user erased, which becomes an
            # empty anchor, an end the fronts stop at (a re-run never writes into it)
            after = last.after
            indices = [s for s in range(n) if not np.array_equal(seg_stack[s], after[s])]
            if prev_options == options:
                previous = prev_result
            else:  # other options: a fresh run from every anchor as it is now, and the corrections
                indices = sorted(set(indices) | set(prev_result.anchors))
        else:
            indices = filled
        if previous is None and not any(seg_stack[s].any() for s in indices):
            raise PromptError("The segment is empty along this axis: segment (or draw) at least one slice, "
                              "then propagate.")
        outside = [s for s in indices if span is not None and seg_stack[s].any() and not span[0] <= s <= span[1]]
        if outside:
            raise PromptError(f"Slice {outside[0]} of the segment lies outside the slices {span[0]}..{span[1]} "
                              "you gave: widen them, or erase that slice.")
        volume_id = self._stack_id(info, layout)
        note = (f". '{segmentationNode.GetName()}' has its own grid, tilted against this volume: a slice you draw "
                "spreads onto its neighbours and every piece is taken for a seed. For exact slices, give it this "
                "volume's geometry (Segment Editor: Specify geometry) and draw the seed again."
                if _tilted_grid(segmentationNode, image_to_seg) else "")
        return PropagationPlan(segmentationNode, segmentId, volumeNode, info.key, key, layout, stack, seg_stack,
                               current, image_to_seg, extent, indices, previous, written_before, options,
                               volume_id, info.window, note)

    def finish_propagation(self, plan: PropagationPlan, result, modify=None) -> str:
        """Write a propagation result (``sonosam.volume.PropagationResult``-like: ``mask`` (n, H, W),
        ``slices``, ``anchors``, ``summary()``) into the segment: never on an anchor, one change per kind.
        Refused if the volume or the segment changed since the plan was made (the user edited meanwhile)."""
        from sonosam.errors import JobCancelledError

        if getattr(result, "cancelled", False):
            raise JobCancelledError("Propagation was cancelled: nothing was written.")
        info = self.volume_info(plan.volume_node)
        if info.key != plan.volume_key:
            raise SegmentationError("The volume changed while propagating; nothing was written. Propagate again.")
        _, seg_stack, _, _ = self._segment_stack(info, plan.layout, plan.segmentation_node, plan.segment_id)
        if not np.array_equal(seg_stack, plan.seg_stack):
            raise SegmentationError("The segment was edited while propagating; nothing was written. "
                                    "Propagate again to continue from your edits.")
        anchors = set(int(s) for s in result.anchors)
        written = (set(int(s) for s in result.slices) | plan.written_before) - anchors
        new_stack = plan.seg_stack.copy()
        for s in written:
            new_stack[s] = np.asarray(result.mask[s], dtype=bool)
        if written:
            self._ensure_reference_geometry(plan.segmentation_node, plan.volume_node)
            layout = plan.layout
            lo, hi = min(written), max(written)
            ext = list(plan.extent)
            ext[2 * layout.axis], ext[2 * layout.axis + 1] = lo, hi
            new = layout.unstack(new_stack)
            sl = [slice(None)] * 3
            sl[array_axis(layout.axis)] = slice(lo, hi + 1)   # layout.axis is IJK; the block is [k, j, i]
            write_segment_block(plan.segmentation_node, plan.segment_id, new[tuple(sl)], plan.image_to_seg, ext,
                                plan.current[tuple(sl)], modify or self.modify)
            _, after, _, _ = self._segment_stack(info, plan.layout, plan.segmentation_node, plan.segment_id)
        else:
            after = plan.seg_stack
        runs = self._propagations.setdefault(plan.key, [])
        runs.append(PropagationRun.of(result, plan.options, written, plan.seg_stack, after))
        del runs[:-KEEP_RUNS]
        self.last_propagation = result
        kept_out = sum(int((new_stack[s] & ~after[s]).sum()) for s in written)
        masking = (f". {kept_out} of its voxels did not reach the segment (the Segment Editor's masking, or the "
                   "segmentation's own coarser or tilted grid)" if kept_out else "")
        return result.summary() + masking + plan.note

    def start_propagation(self, plan: PropagationPlan) -> PropagationTask:
        """Start the plan: a server job when the predictor is a client (``start_job``), else in-process now."""
        return PropagationTask(self, plan)

    def _evaluation_inputs(self, volumeNode, segmentationNode, segmentId, sliceAxis, slices, maxSlices, minArea):
        """(info, layout, stack, segment stack, the slices to score, segment name) for ``evaluate``."""
        segment = _segment_and_label(segmentationNode, segmentId)
        info, layout, stack = self._volume_stack(volumeNode, sliceAxis)
        _, seg_stack, _, _ = self._segment_stack(info, layout, segmentationNode, segmentId)
        filled = [s for s in range(stack.shape[0]) if seg_stack[s].sum() >= max(1, minArea)]
        if maxSlices is not None and int(maxSlices) < 1:
            raise PromptError(f"maxSlices must be 1 or more (or None: every slice), not {maxSlices}.")
        if slices is not None:
            chosen = sorted({int(v) for v in slices})
            outside = [s for s in chosen if not 0 <= s < stack.shape[0]]
            if outside:
                raise PromptError(f"Slice {outside[0]} is outside 0..{stack.shape[0] - 1} along this axis.")
            filled = [s for s in chosen if s in set(filled)]
        if maxSlices and len(filled) > maxSlices:
            filled = [filled[int(round(i))] for i in np.linspace(0, len(filled) - 1, int(maxSlices))]
        if not filled:
            raise PromptError(f"Segment '{segment.GetName()}' has no slice of at least {minArea} pixels along "
                              "this axis to evaluate on.")
        return info, layout, stack, seg_stack, filled, segment.GetName()

    def evaluate(self, volumeNode, segmentationNode, segmentId, sliceAxis="axial", nClicks: int = 10,
                 start: str = "box", outputDir=None, slices=None, maxSlices=None, minArea: int = 100,
                 localCorrections: bool = False, overwrite: bool = False):
        """Score the model against the segment (the reference) with the core's simulated-click protocol
        (``sonosam.evaluate``) on the segment's slices along ``sliceAxis`` (or ``slices``; ``maxSlices``:
        that many, evenly spread; ``localCorrections``: each click kept local to it, as the effect shows
        it, instead of SAM's protocol). Returns the summary table (a list of row dicts: Dice@1, MaxDSC, NoC...)
        and writes the report (per-image CSV, summary, Dice-vs-clicks plot) into ``outputDir`` when given (an
        earlier report there is replaced only with ``overwrite``: checked before the evaluation runs). In-process;
        the module runs the same inputs as a server job (``start_evaluation``)."""
        try:
            from sonosam.evaluate import evaluate as core_evaluate
            from sonosam.evaluate import samples_from_arrays, summary_table, write_report
            from sonosam.image import to_uint8_rgb
        except ImportError as error:
            raise MissingDependencyError(f"SonoSAM's core is not installed ({error}).") from error
        if outputDir:
            from sonosam.evaluate.report import REPORT_FILES
            from sonosam.io import check_output_folder

            check_output_folder(outputDir, REPORT_FILES, overwrite, "a report")
        info, layout, stack, seg_stack, filled, name = self._evaluation_inputs(
            volumeNode, segmentationNode, segmentId, sliceAxis, slices, maxSlices, minArea)
        samples = samples_from_arrays(stack, seg_stack.view(np.uint8), labels=[1], axis=0, min_area=minArea,
                                      name=name, slices=filled)
        for sample in samples:  # the volume's window and a cache key naming these pixels, as the tool uses
            index = sample.key[-1]
            sample.image = to_uint8_rgb(sample.image, window=info.window)
            sample.key = (info.key, "evaluate", "IJK"[layout.axis], layout.x_flip, layout.y_flip, index)
        result = core_evaluate(self.interactive_predictor, samples, n_clicks=int(nClicks), start=start,
                               progress=False, local_corrections=bool(localCorrections))
        self.last_evaluation = result
        if outputDir:   # with run.json: what was scored, by which model and code, as `sonosam evaluate` records it
            from sonosam.evaluate import model_record, run_record

            predictor = self.interactive_predictor
            model = getattr(self.base_predictor, "model", None)
            run = run_record({"volume": volumeNode.GetName(), "segment": name, "axis": sliceAxis, "slices": filled,
                              "n_clicks": int(nClicks), "start": start, "min_area": minArea,
                              "local_corrections": bool(localCorrections)},
                             [model_record(model, predictor)] if model is not None else [])
            write_report([result], outputDir, title=f"{result.model} on '{name}'", overwrite=overwrite, run=run)
        return summary_table([result])

    def start_evaluation(self, volumeNode, segmentationNode, segmentId, sliceAxis="axial", nClicks: int = 10,
                         start: str = "box", slices=None, maxSlices=None, minArea: int = 100,
                         localCorrections: bool = False):
        """``evaluate`` as a server job (the predictor must be a client): returns the job; its result is
        ``{"table": rows, "result": ...}``. The same slices, window and protocol as ``evaluate``."""
        if not hasattr(self.predictor, "start_job"):
            raise NotConnectedError("Evaluation as a job needs a SonoSAM server: connect one first.")
        info, layout, stack, seg_stack, filled, name = self._evaluation_inputs(
            volumeNode, segmentationNode, segmentId, sliceAxis, slices, maxSlices, minArea)
        return _prepare_job(self.predictor, "evaluate", volume=stack, labelmap=seg_stack.view(np.uint8), labels=[1],
                            slices=[int(s) for s in filled], n_clicks=int(nClicks), start=start,
                            min_area=int(minArea), window=info.window, name=name,
                            local_corrections=bool(localCorrections))

    # -- few-shot and prompt-free modes: SAM^assist and the prompt predictor (docs/seeds.md) ------------
    def accepted_slices(self, volumeNode, segmentationNode, segmentId, sliceAxis="axial", most: int = 5) -> list:
        """The segment's non-empty slices along the axis (what the user has accepted), at most ``most`` of
        them evenly spread: the slices ``learn_from_segment`` learns from by default."""
        _segment_and_label(segmentationNode, segmentId)
        info, layout, _ = self._volume_stack(volumeNode, sliceAxis)
        _, seg_stack, _, _ = self._segment_stack(info, layout, segmentationNode, segmentId)
        filled = [s for s in range(seg_stack.shape[0]) if seg_stack[s].any()]
        if len(filled) > most:
            filled = [filled[int(round(i))] for i in np.linspace(0, len(filled) - 1, most)]
        return filled

    def start_learning(self, volumeNode, segmentationNode, segmentId, sliceAxis="axial", slices=None,
                       steps: int = 30, seed: int = 0, kinds=("box", "point")) -> "LearnTask":
        """SAM^assist from 2-5 accepted slices of the segment (default: ``accepted_slices``): a server job
        when the model is on a server, else run here now. Poll the task, then ``finish()`` makes the learned
        prompt encoder the one every later prediction uses (``use_base_model()`` goes back)."""
        segment = _segment_and_label(segmentationNode, segmentId)
        info, layout, stack = self._volume_stack(volumeNode, sliceAxis)
        _, seg_stack, _, _ = self._segment_stack(info, layout, segmentationNode, segmentId)
        if slices is None:
            slices = self.accepted_slices(volumeNode, segmentationNode, segmentId, sliceAxis)
        slices = sorted({int(s) for s in slices})
        bad = [s for s in slices if not 0 <= s < stack.shape[0]]
        if bad:
            raise PromptError(f"Slice {bad[0]} is outside 0..{stack.shape[0] - 1} along this axis.")
        empty = [s for s in slices if not seg_stack[s].any()]
        if empty:
            raise PromptError(f"Segment '{segment.GetName()}' is empty on slice {empty[0]}: learn from slices you "
                              "have segmented and accepted.")
        if not 2 <= len(slices) <= 5:
            raise PromptError(f"Learning needs 2-5 accepted slices of '{segment.GetName()}' along this axis; it has "
                              f"{len(slices)}{': ' + ', '.join(map(str, slices)) if slices else ''}. Segment and "
                              "accept a few slices across the structure first.")
        return LearnTask(self, stack, slices, np.stack([seg_stack[s] for s in slices]), info.window,
                         self._stack_id(info, layout), segment.GetName(),
                         dict(steps=int(steps), seed=int(seed), kinds=tuple(kinds)))

    def learn_from_segment(self, volumeNode, segmentationNode, segmentId, sliceAxis="axial", slices=None,
                           steps: int = 30, seed: int = 0, kinds=("box", "point"), timeout=None) -> "AssistInfo":
        """Console API: ``start_learning``, wait, ``finish``. Returns what was learned (slices, seconds)."""
        task = self.start_learning(volumeNode, segmentationNode, segmentId, sliceAxis, slices, steps, seed, kinds)
        task.wait(timeout)
        return task.finish()

    def available_ppns(self) -> list:
        """The trained prompt predictors the model side can use: [{"name", "classes"}] (the server's PPN folder,
        or $SONOSAM_HOME/ppn in-process)."""
        predictor = self.base_predictor
        if hasattr(predictor, "start_job"):
            return list(predictor.info().get("ppn", []))
        from sonosam.auto import PPN_SUFFIXES, ppn_dir
        from sonosam.ppn import load_ppn

        out = []
        for path in sorted(ppn_dir().glob("*")) if ppn_dir().is_dir() else []:
            if path.name.endswith(PPN_SUFFIXES):
                try:
                    out.append({"name": path.name, "classes": list(load_ppn(path).classes)})
                except Exception:  # noqa: BLE001 - not a prompt predictor: not listed
                    continue
        return out

    def start_auto_segment(self, volumeNode, segmentationNode, className, ppn, segmentId=None, sliceAxis="axial",
                           sliceRange=None, threshold: float = 0.5, cancel=None) -> "AutoTask":
        """'Auto': the prompt predictor ``ppn`` segments ``className`` on every slice along the axis, or on
        ``sliceRange`` = (first, last) inclusive, with no clicks. ``ppn``: a PPN file name known to the server
        (``available_ppns``), a local file path (sent to the server as bytes, or loaded here in-process), or a
        loaded ``PromptPredictor`` (in-process). A server job when the model is on a server (poll the task),
        else run here now (``cancel``: threading.Event or callable, for scripts). Nothing is written until
        ``finish()``: into ``segmentId``, or a new segment named after the class."""
        from pathlib import Path

        if segmentId:
            _segment_and_label(segmentationNode, segmentId)
        elif segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise SegmentationError("No segmentation selected: choose or create a segmentation node.")
        if not className:
            raise PromptError("Choose the class to segment (one the prompt predictor was trained for).")
        if ppn is None or ppn == "":
            raise PromptError("Choose the prompt predictor: a PPN file name (available_ppns()) or a .pt file.")
        if sliceRange is not None and (np.ndim(sliceRange) != 1 or len(sliceRange) != 2):
            raise PromptError(f"sliceRange is (first, last), two slice indices; got {sliceRange!r}.")
        info, layout, stack = self._volume_stack(volumeNode, sliceAxis)
        n = stack.shape[0]
        if sliceRange is None:
            indices = list(range(n))
        else:
            first, last = sorted(int(v) for v in sliceRange)
            if first < 0 or last >= n:
                raise PromptError(f"Slice range {first}-{last} is outside 0..{n - 1} along this axis.")
            indices = list(range(first, last + 1))
        _, seg_stack, _, _ = (None, None, None, None) if not segmentId else \
            self._segment_stack(info, layout, segmentationNode, segmentId)
        predictor = self.base_predictor   # the PPN was trained against the base model's prompt encoder
        job = result = None
        if hasattr(predictor, "start_job"):
            source = {"ppn": ppn}
            if not isinstance(ppn, str):
                raise PromptError("With a SonoSAM server, name the prompt predictor (a file name from "
                                  "available_ppns()) or give a local .pt file to send.")
            if Path(ppn).is_file() and Path(ppn).name != ppn:   # a local file: its bytes travel with the job
                source = {"ppn_bytes": Path(ppn).read_bytes()}
            job = _prepare_job(predictor, "auto", volume=stack, slices=indices, class_name=className,
                               threshold=float(threshold), window=info.window, **source)
        else:
            from sonosam.auto import auto_segment_stack, find_ppn
            from sonosam.ppn import load_ppn

            if isinstance(ppn, (str, Path)):
                ppn = load_ppn(ppn if Path(ppn).is_file() else find_ppn(str(ppn)))
            result = auto_segment_stack(ppn, predictor, stack, className, indices, threshold=float(threshold),
                                        window=info.window, key_prefix=self._stack_id(info, layout), cancel=cancel)
        return AutoTask(self, volumeNode, info.key, layout, segmentationNode, segmentId, seg_stack, className,
                        indices, job, result)

    def auto_segment(self, volumeNode, segmentationNode, className, ppn, segmentId=None, sliceAxis="axial",
                     sliceRange=None, threshold: float = 0.5, modify=None, timeout=None) -> "AutoOutcome":
        """Console API: ``start_auto_segment``, wait, ``finish``: the class written into ``segmentId`` (or a new
        segment) on the slices where the predictor finds it; other slices and other segments are not touched
        (one change per kind: call ``saveStateForUndo()`` before for one undo step)."""
        task = self.start_auto_segment(volumeNode, segmentationNode, className, ppn, segmentId, sliceAxis,
                                       sliceRange, threshold)
        task.wait(timeout)
        return task.finish(modify)

    # -- background encoding -------------------------------------------------------------------------
    def prefetch(self, volumeNode, geometries, on_progress=None):
        """Encode the given slices in the core's background thread, or on the server (nearest first as given);
        returns the job (``done``, ``done_count``, ``cancel()``) for the caller to poll -- the effect uses a QTimer.
        On a server nothing is sent here: each ``done`` sends a step of the slices, then starts the encoding."""
        info = self.volume_info(volumeNode)
        predictor = self.predictor
        prefetch = getattr(predictor, "prepare_prefetch", None) or getattr(predictor, "prefetch", None)
        if prefetch is None:
            return None
        items = [(g.key(info.key), (lambda g=g: self.slice_image(info, g))) for g in geometries]
        return prefetch(items, window=info.window, on_progress=on_progress)

    def encode_ahead(self, volumeNode, sliceToRASes, radius: int = 1):
        """When the slice views show new slices: encode each one (its ``sliceToRAS``) and its ``radius``
        neighbours that are not encoded yet, ahead of the first click. Returns the job to poll, or None when there
        is nothing to encode. Asks a server once (which of them it has encoded); the slices travel from the
        job's polls. A view that does not cut the volume is skipped."""
        geometries = []
        for sliceToRAS in sliceToRASes:
            try:
                geometry = self.slice_geometry(volumeNode, sliceToRAS=sliceToRAS)
            except Exception:  # this view does not cut the volume: nothing to encode
                continue
            geometries += self.neighbour_geometries(volumeNode, geometry, radius=radius)
        missing = self.uncached(volumeNode, geometries) if geometries else []
        return self.prefetch(volumeNode, missing) if missing else None

    def prepare_box(self, volumeNode, geometry, box_ras):
        """On a server, encode ahead what a box's answer needs beyond the slice (the zoomed crops of a model that
        answers boxes at several scales, sonosam.zoom) and return the job to poll; None where nothing is encoded
        ahead (in-process the answer encodes them itself; an assisted model answers on the whole slice)."""
        predictor = self.predictor
        # the effect holds an assisted client as its predictor (the connection's use_assist), not as _assist
        if self._assist is not None or getattr(predictor, "assist", None) or not hasattr(predictor, "start_job"):
            return None
        info = self.volume_info(volumeNode)
        box_xy = self._prompts_xy(info, geometry, None, None, box_ras)[2]
        prefetch = getattr(predictor, "prepare_prefetch", None) or predictor.prefetch   # sent from the job's polls
        return prefetch([(geometry.key(info.key), lambda: self.slice_image(info, geometry))], window=info.window,
                        box=box_xy)

    def is_cached(self, volumeNode, geometry) -> bool:
        return not self.uncached(volumeNode, [geometry])

    def uncached(self, volumeNode, geometries) -> list:
        """The geometries whose slice the predictor has not encoded, in their order: one request to a server
        (``cached``), within ``request_timeout``; an answer later than that counts as none encoded (an encode job
        finds the ones that are, at no cost)."""
        info = self.volume_info(volumeNode)
        keys = [g.key(info.key) for g in geometries]
        predictor = self.predictor
        if hasattr(predictor, "cached"):
            try:
                encoded = predictor.cached(keys, info.window, timeout=self.request_timeout)
            except TimeoutError:   # sonosam.client.ServerTimeoutError: a busy or far server
                encoded = [False] * len(keys)
        else:
            check = getattr(predictor, "is_cached", None)
            encoded = [bool(check and check(key, info.window)) for key in keys]
        return [g for g, done in zip(geometries, encoded) if not done]

    def neighbour_geometries(self, volumeNode, geometry, radius: int = 2):
        """This slice and its neighbours along the same axis, nearest first (to encode ahead of the user)."""
        if isinstance(geometry, geo.ObliquePlane):
            return [geometry]
        out = [geometry]
        for d in range(1, radius + 1):
            for idx in (geometry.index + d, geometry.index - d):
                if 0 <= idx < geometry.dims_ijk[geometry.axis]:
                    out.append(geo.SliceGeometry(geometry.axis, idx, geometry.dims_ijk, geometry.x_axis,
                                                 geometry.y_axis, geometry.x_flip, geometry.y_flip))
        return out


def _gui_seconds() -> float:
    """How long one request from a GUI timer may hold that thread (sonosam.client.GUI_POLL_SECONDS)."""
    from sonosam.client import GUI_POLL_SECONDS

    return GUI_POLL_SECONDS


def _prepare_job(predictor, kind: str, **arguments):
    """A server job prepared, not started: the GUI timer's polls send its arrays in chunks, then start it."""
    prepare = getattr(predictor, "prepare_job", None) or predictor.start_job
    return prepare(kind, **arguments)


class _JobTask:
    """A server job (or work already done in-process) for a GUI timer: ``poll()`` -> (state, done, total,
    message), ``cancel()``, ``wait()``; subclasses ``finish()``. With a server, the first polls send the
    volume a chunk at a time (state "sending", done/total in MiB)."""
    job = None
    cancel_requested = False

    def poll(self):
        if self.job is None:
            state, done, total, message = "done", 1, 1, ""
        else:
            status = self.job.poll(timeout=_gui_seconds())  # late: the last status, asked again next tick
            done, total = (status.get("progress") or [0, 0])[:2]
            state, message = status["state"], status.get("message", "")
        if self.cancel_requested and state == "done":
            state = "cancelled"   # it ended before the cancel reached it: still, the user asked for nothing
        return state, int(done), int(total), message

    def cancel(self):
        """Nothing will be written: the job stops, and ``finish`` refuses even if it had already ended."""
        self.cancel_requested = True
        if self.job is not None:
            self.job.cancel(timeout=_gui_seconds())   # a hung server must not hold Slicer; finish refuses anyway

    def _refuse_if_cancelled(self, what: str):
        from sonosam.errors import JobCancelledError

        if self.cancel_requested:
            raise JobCancelledError(f"{what} was cancelled: nothing was written.")

    def wait(self, timeout=None):
        if self.job is not None:
            self.job.wait(timeout)


class PropagationTask(_JobTask):
    """A propagation running as a server job (or already run in-process), for a GUI timer to poll:
    ``poll()`` -> (state, done, total, message), ``cancel()``, then ``finish(modify)`` writes the result.
    With a server, the first polls send the volume a chunk at a time (state "sending", done/total in MiB).
    Nothing is written before ``finish``: a cancelled or failed job, or a server that died, leaves the
    segment as it was."""

    def __init__(self, logic: SegmentLogic, plan: PropagationPlan):
        self.logic, self.plan = logic, plan
        self.job = None
        self.result = None
        predictor = logic.predictor
        previous = plan.previous
        if hasattr(predictor, "start_job"):
            seeds = [{"index": int(s), "mask": plan.seg_stack[s].copy()} for s in plan.seed_indices]
            self.job = _prepare_job(predictor, "propagate", volume=plan.stack, seeds=seeds, axis=0,
                                    previous=getattr(previous, "job_id", None), window=plan.window, **plan.options)
        else:
            from sonosam.volume import propagate as core_propagate

            self.result = core_propagate(predictor, plan.stack, plan.seeds(), axis=0, previous=previous,
                                         volume_id=plan.volume_id, window=plan.window, **plan.options)

    def poll(self):
        return self._previous_kept(super().poll)

    def wait(self, timeout=None):
        return self._previous_kept(lambda: super(PropagationTask, self).wait(timeout))

    def _previous_kept(self, call):
        """A re-run whose earlier run the server no longer holds (it keeps the newest results within a memory
        budget) forgets it, so that the next Propagate runs afresh from the segment's slices instead of failing
        the same way every time."""
        from sonosam.errors import ServerError

        try:
            return call()
        except ServerError as error:
            if error.code != "unknown_job" or self.plan.previous is None:
                raise
            self.logic._propagations.pop(self.plan.key, None)
            raise SegmentationError("The server no longer holds this segment's earlier run (it keeps the newest "
                                    "results within its memory): nothing was written. Propagate again: it runs "
                                    "afresh from the segment's slices.") from None

    def finish(self, modify=None) -> str:
        """Fetch the result (the job must be finished) and write it; raises the job's error, or
        ``JobCancelledError`` when it was cancelled."""
        self._refuse_if_cancelled("Propagation")
        if self.result is None:
            self.result = self.job.result(timeout=5)
        return self.logic.finish_propagation(self.plan, self.result, modify)


def cancel_quietly(job) -> None:
    """Cancel a job or task; a server that is gone already is only logged (a GUI's cleanup must not fail)."""
    import logging

    try:
        job.cancel()
    except Exception as error:
        logging.debug(f"SonoSAM: cancelling: {error}")


@dataclass
class PropagationTick:
    """What one timer tick of a propagation gives the panel: ``status`` for the status line (None: leave it),
    ``progress`` (done, total) while a job runs, ``ended`` when the job stopped running (hide the busy bar),
    ``changed`` when Propagate / Stop change (``PropagationControl.busy``)."""
    status: str | None = None
    progress: tuple | None = None
    ended: bool = False
    changed: bool = False


class PropagationControl:
    """The SonoSAM effect's propagation, without Qt (the effect shows what it says). The effect writes into the
    editor's selected segment, with the editor's masking for it, so a finished propagation is written only while
    its segment is the selected one: at once, or -- when the user went on with another segment meanwhile -- held
    and said once on the status line, then written when that segment is selected again (after the undo check,
    ``finish``'s). Stop cancels a running one or discards a held one; Propagate is off while one runs or is held
    (``busy``); leaving the effect stops a running one but keeps a held one; closing the scene discards both; a
    held one whose segment was deleted is an error. Nothing is ever written but by ``poll`` with the segment
    selected."""

    def __init__(self):
        self.running = None   # PropagationTask while its job runs
        self.held = None      # a finished one, kept until its segment is selected again
        self.said = None      # what the status line last said about the held one (said once, not every tick)

    @property
    def busy(self) -> bool:
        """Propagate disabled, Stop enabled."""
        return self.running is not None or self.held is not None

    def start(self, task) -> None:
        self.running = task

    def poll(self, segmentation_node, segment_id, writer) -> PropagationTick:
        """One tick, with the editor's selection now; ``writer()`` gives the ``modify`` a write uses. Raises the
        job's error, a refused write, or a deleted segment's (the job and the held result are dropped first, so an
        error is said once)."""
        task = self.running
        if task is None:
            return self._write_held(segmentation_node, segment_id, writer)
        try:
            state, done, total, message = task.poll()
        except Exception:
            self.running = None
            raise
        if state not in ("done", "failed", "cancelled"):
            status = (f"Propagating: {message}" if state == "sending"   # the volume travels in chunks (MiB)
                      else f"Propagating: {done}/{total} slices. {message}".strip())
            return PropagationTick(status, (done, total) if total else None)
        self.running = None
        if state == "cancelled":
            return PropagationTick("Propagation stopped: the segment is unchanged.", ended=True, changed=True)
        if state == "failed":
            task.finish(modify=writer())   # raises the job's error
        self.held = task
        tick = self._write_held(segmentation_node, segment_id, writer)
        tick.ended = tick.changed = True
        return tick

    def _write_held(self, segmentation_node, segment_id, writer) -> PropagationTick:
        task = self.held
        if task is None:
            return PropagationTick()
        plan = task.plan
        segmentation = plan.segmentation_node
        segment = segmentation.GetSegmentation().GetSegment(plan.segment_id) if segmentation.GetScene() else None
        if segment is None:
            self.held = self.said = None
            raise SegmentationError("The segment this propagation was for was deleted: nothing was written.")
        if segmentation_node is not segmentation or segment_id != plan.segment_id:
            message = (f"Propagation of '{segment.GetName()}' finished: select '{segment.GetName()}' of "
                       f"'{segmentation.GetName()}' to write it, or Stop to discard it.")
            if message == self.said:   # once: the status line stays free for the other segment's work
                return PropagationTick()
            self.said = message
            return PropagationTick(message, changed=True)
        self.held = self.said = None
        return PropagationTick(task.finish(modify=writer()), changed=True)

    def stop(self) -> str | None:
        """The Stop button: cancel a running one (its poll then says it stopped) or discard a held one; nothing is
        written. The status line's text, None when there was nothing to stop."""
        if self.running is not None:
            cancel_quietly(self.running)
            return "Stopping the propagation (nothing will be written)..."
        if self.held is not None:
            self.end()
            return "The finished propagation was discarded: nothing was written."
        return None

    def end(self, keep_held: bool = False) -> bool:
        """Stop a running one, and discard a held one unless ``keep_held`` (leaving the effect keeps it: it is
        said again on return); nothing is written. True when one was stopped or discarded."""
        held = None if keep_held else self.held
        stopped = self.running is not None or held is not None
        for task in (self.running, held):
            if task is not None:
                cancel_quietly(task)
        self.running = self.said = None
        if not keep_held:
            self.held = None
        return stopped


class RefineTask(_JobTask):
    """The refiner as a server job (or run in-process at once); ``finish()`` -> the SlicePrediction preview."""

    def __init__(self, logic, info, geometry, image, coarse, context, steps, seed, source=None):
        self.logic, self.info, self.geometry, self.began = logic, info, geometry, time.perf_counter()
        # (segmentation, segment id, its mask on the slice now): a result for an edited slice is refused
        self.source = None if source is None else (*source, coarse)
        coarse = coarse.astype(np.float32)
        self.outcome = None
        predictor = logic.predictor
        if hasattr(predictor, "start_job"):   # a SonoSAMClient: the server's refine job
            self.job = _prepare_job(predictor, "refine", image=image, coarse=coarse, context=context, steps=steps,
                                    seed=seed, window=info.window)
        else:
            from sonosam.refine import refine

            embedding = predictor.embedding(image, key=geometry.key(info.key), window=info.window)
            result = refine(predictor, image, coarse, context=context, steps=steps, seed=seed, embedding=embedding)
            self.outcome = (result.mask, result.score, result.positives, result.negatives)

    def finish(self) -> SlicePrediction:
        if self.source is not None:
            node, segment_id, coarse = self.source
            _require_in_scene(node)
            if not np.array_equal(self.logic.read_slice_mask(node, segment_id, self.info, self.geometry), coarse):
                raise SegmentationError("The segment was edited on this slice while the refiner ran; nothing was "
                                        "written. Refine again to start from your edits.")
        if self.outcome is None:
            meta, arrays = self.job.result(timeout=5)
            self.outcome = (np.asarray(arrays["mask"], bool), float(meta["score"]), np.asarray(meta["positives"]),
                            np.asarray(meta["negatives"]))
        mask, score, positives, negatives = self.outcome
        points = np.concatenate([positives.reshape(-1, 2), negatives.reshape(-1, 2)])
        labels = np.array([1] * len(positives) + [0] * len(negatives))
        return SlicePrediction(self.info.key, self.geometry, mask, score, None, points, labels, None,
                               [f"refined from the segment: {len(positives)} positive, {len(negatives)} negative points"],
                               {"total_s": time.perf_counter() - self.began})


@dataclass
class AssistInfo:
    """What ``learn_from_segment`` learned from: the segment, the slices (indices along the axis), training
    time (seconds, the slices' encoding excluded), the prompt-encoder parameters trained, the losses."""
    segment_name: str
    slices: list
    seconds: float
    encode_seconds: float
    trained_parameters: int
    losses: list
    prompt_kinds: list

    def summary(self) -> str:
        return (f"Learned from '{self.segment_name}' on slices {', '.join(map(str, self.slices))} in "
                f"{self.seconds:.1f} s (+ {self.encode_seconds:.1f} s encoding; {self.trained_parameters} "
                f"prompt-encoder parameters); clicks and boxes now use it.")


class LearnTask(_JobTask):
    """SAM^assist as a server job (or run in-process at once); ``finish()`` activates the learned prompt
    encoder on the logic. Cancelled or failed: the logic keeps its current model."""

    def __init__(self, logic: SegmentLogic, stack, slices, masks, window, stack_id, segment_name, options):
        self.logic, self.slices, self.segment_name = logic, list(slices), segment_name
        self.assisted = None
        base = logic.base_predictor
        if hasattr(base, "start_job"):
            self.job = _prepare_job(base, "assist", volume=stack, slices=self.slices, masks=masks, window=window,
                                    **options)
        else:
            from sonosam.assist import learn_assist

            self.assisted = learn_assist(base, stack, self.slices, list(masks), window=window, key_prefix=stack_id,
                                         **options)

    def finish(self) -> AssistInfo:
        base = self.logic.base_predictor
        if self.assisted is None:
            if self.job.client is not base:
                raise SegmentationError("The server changed while Learn ran: what it learned stays on the other "
                                        "server. Learn again on this one.")
            meta = self.job.result(timeout=5)
            assisted = base.with_assist(meta["assist"], meta["prompt_kinds"])
            info = AssistInfo(self.segment_name, meta["slices"], meta["seconds"], meta["encode_seconds"],
                              meta["trained_parameters"], meta["losses"], meta["prompt_kinds"])
        else:
            assisted, result = self.assisted, self.assisted.result
            info = AssistInfo(self.segment_name, self.slices, result.seconds, result.encode_seconds,
                              result.trained_parameters, result.losses,
                              sorted(str(getattr(k, "value", k)) for k in assisted.model.spec.prompt_kinds))
        self.logic._assist, self.logic.assist_info = assisted, info
        return info


@dataclass
class AutoOutcome:
    """What 'Auto' wrote: the segment, the slices where the class was found (written), those judged absent
    (left as they were), the per-slice objectness."""
    segment_id: str
    class_name: str
    written: list
    absent: list
    objectness: dict
    created: bool

    def summary(self) -> str:
        return (f"{self.class_name}: found on {len(self.written)} of {len(self.written) + len(self.absent)} slices"
                + (f" ({self.written[0]}-{self.written[-1]})" if self.written else "")
                + (" into a new segment" if self.created else "") + ".")


class AutoTask(_JobTask):
    """'Auto' as a server job (or run in-process at once). ``finish(modify)`` writes the class into the
    segment on the slices where it was found (replacing the segment there); nothing is written before, and
    nothing when it was cancelled, failed, or the volume / target segment changed meanwhile."""

    def __init__(self, logic, volume_node, volume_key, layout, segmentation_node, segment_id, seg_stack, class_name,
                 indices, job, result):
        self.logic, self.volume_node, self.volume_key, self.layout = logic, volume_node, volume_key, layout
        self.segmentation_node, self.segment_id, self.seg_stack = segmentation_node, segment_id, seg_stack
        self.class_name, self.indices, self.job, self.result = class_name, list(indices), job, result

    def finish(self, modify=None) -> AutoOutcome:
        from sonosam.errors import JobCancelledError

        self._refuse_if_cancelled("Auto")
        if self.result is not None:
            if self.result.cancelled:
                raise JobCancelledError("Auto was cancelled: nothing was written.")
            masks, slices = self.result.masks, [s.as_dict() for s in self.result.slices]
        else:
            meta, arrays = self.job.result(timeout=5)
            masks, slices = np.asarray(arrays["masks"], bool), meta["slices"]
        logic, node = self.logic, self.segmentation_node
        _require_in_scene(node)   # before the undo state or a new segment touch it
        modify = modify or logic.modify or editor_writer()
        info = logic.volume_info(self.volume_node)
        if info.key != self.volume_key:
            raise SegmentationError("The volume changed while Auto ran; nothing was written. Run it again.")
        present = [(n, int(s["index"])) for n, s in enumerate(slices) if s["present"]]
        created = False
        segment_id = self.segment_id
        if segment_id:
            _, now, _, _ = logic._segment_stack(info, self.layout, node, segment_id)
            if not np.array_equal(now, self.seg_stack):
                raise SegmentationError("The segment was edited while Auto ran; nothing was written. Run it again.")
        elif present:
            getattr(modify, "before_change", lambda *_: None)(node, "")   # the undo state, before the new segment
            segment_id = node.GetSegmentation().AddEmptySegment("", _unique_segment_name(node, self.class_name))
            created = True
        if present:
            current, seg_stack, image_to_seg, extent = logic._segment_stack(info, self.layout, node, segment_id)
            new_stack = seg_stack.copy()
            for n, index in present:
                new_stack[index] = masks[n]
            lo, hi = present[0][1], present[-1][1]
            ext = list(extent)
            ext[2 * self.layout.axis], ext[2 * self.layout.axis + 1] = lo, hi
            sl = [slice(None)] * 3
            sl[array_axis(self.layout.axis)] = slice(lo, hi + 1)
            logic._ensure_reference_geometry(node, self.volume_node)
            write_segment_block(node, segment_id, self.layout.unstack(new_stack)[tuple(sl)], image_to_seg, ext,
                                current[tuple(sl)], modify)
        return AutoOutcome(segment_id or "", self.class_name, [i for _, i in present],
                           [int(s["index"]) for s in slices if not s["present"]],
                           {int(s["index"]): float(s["objectness"]) for s in slices}, created)


def _unique_segment_name(segmentation_node, name: str) -> str:
    segmentation = segmentation_node.GetSegmentation()
    taken = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name} {n}", n + 1
    return candidate


# ---------------------------------------------------------------------------------------------------
# Helper nodes (prompt markers, box, preview): hidden, not saved, and not the Markups toolbar's list
# ---------------------------------------------------------------------------------------------------

def add_helper_node(scene, class_name: str, name: str):
    """A node the user does not manage: hidden from node selectors, not saved with the scene; a markups
    node does not become the active place list (Slicer's markups logic makes every new list active)."""
    selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
    before = (selection.GetActivePlaceNodeID(), selection.GetActivePlaceNodeClassName()) if selection else None
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetHideFromEditors(True)
    node.SetSaveWithScene(False)
    node.CreateDefaultDisplayNodes()
    if selection is not None and (selection.GetActivePlaceNodeID(), selection.GetActivePlaceNodeClassName()) != before:
        selection.SetActivePlaceNodeID(before[0])
        if before[1]:
            selection.SetReferenceActivePlaceNodeClassName(before[1])
    return node


# ---------------------------------------------------------------------------------------------------
# An interactive prompt session (what the effect holds between clicks), Qt-free so it is tested
# ---------------------------------------------------------------------------------------------------

class PromptSession:
    """The prompts on one slice of one volume: clicks (+/-), an optional box, the model's last logits.

    Markers live in a markups fiducial node (``markups_node``) so that they show in every view and can be
    deleted one by one with Slicer's own markups tools; ``sync_from_markups`` picks up such deletions.
    A prompt on another slice (or view) starts a new session. With ``local_corrections`` a click added to a
    preview changes it only near the click, where the model changed the clicked pixel; a positive click the model
    ignored adds what it segments from that click alone, and a click still not reached changes the disk around it
    up to the mask's edge (``sonosam.masks.local_correction``; docs/training.md measures it); moving a marker or
    a new box asks the model afresh, and prompts seen before on this slice (the last point removed) bring back the
    preview they had, since with local corrections it depends on the clicks' order. ``check`` puts the seed check's
    suggestion in place of a box's first answer where it makes one (docs/volume.md, stop 56).
    """

    POSITIVE, NEGATIVE = "+", "-"

    def __init__(self, logic: SegmentLogic, markups_node=None, box_node=None, local_corrections: bool = True):
        self.logic = logic
        self.markups_node = markups_node
        self.box_node = box_node
        self.local_corrections = local_corrections
        self.clear()

    def clear(self):
        self.points_ras: list = []
        self.labels: list = []
        self.box_ras = None
        self.slice_key = None
        self.prediction: SlicePrediction | None = None
        self.choices: SeedChoices | None = None   # the seed check of the last preview
        self._previews: dict = {}                 # prompts -> the preview shown for them (undo of a click)
        self._checks: dict = {}                   # prompts -> the seed check of their first preview
        self._alternatives: set = set()           # prompts whose preview is a picked alternative or corrected from one
        self._shown_for = None                    # the prompts the current preview answers
        if self.markups_node is not None:
            self.markups_node.RemoveAllControlPoints()
        if self.box_node is not None:
            self.box_node.RemoveAllControlPoints()

    def _start_or_continue(self, volume_node, new_ras, slice_axis, slice_to_ras):
        geometry = self.logic.slice_geometry(volume_node, slice_axis, points_ras=np.atleast_2d(new_ras),
                                             sliceToRAS=slice_to_ras)
        key = geometry.key(self.logic.volume_info(volume_node).key)
        if key != self.slice_key:
            self.clear()
            self.slice_key = key

    def add_point(self, volume_node, ras, positive: bool = True, slice_axis="axial", slice_to_ras=None):
        self._start_or_continue(volume_node, ras, slice_axis, slice_to_ras)
        self.points_ras.append([float(v) for v in ras])
        self.labels.append(1 if positive else 0)
        if self.markups_node is not None:
            index = self.markups_node.AddControlPoint(*[float(v) for v in ras])
            self.markups_node.SetNthControlPointLabel(index, self.POSITIVE if positive else self.NEGATIVE)

    def set_box(self, volume_node, corner0_ras, corner1_ras, slice_axis="axial", slice_to_ras=None):
        self._start_or_continue(volume_node, np.vstack([corner0_ras, corner1_ras]), slice_axis, slice_to_ras)
        self.box_ras = [[float(v) for v in corner0_ras], [float(v) for v in corner1_ras]]
        if self.box_node is not None:
            self.box_node.RemoveAllControlPoints()
            for corner in self.box_ras:
                self.box_node.AddControlPoint(*corner)

    def remove_point(self, index: int):
        del self.points_ras[index]
        del self.labels[index]
        if self.markups_node is not None:
            self.markups_node.RemoveNthControlPoint(index)

    def sync_from_markups(self) -> bool:
        """Take the points from the markups node (the user may have moved or deleted some); True if changed."""
        if self.markups_node is None:
            return False
        points, labels = [], []
        for i in range(self.markups_node.GetNumberOfControlPoints()):
            pos = [0.0, 0.0, 0.0]
            self.markups_node.GetNthControlPointPosition(i, pos)
            points.append(pos)
            labels.append(0 if self.markups_node.GetNthControlPointLabel(i) == self.NEGATIVE else 1)
        changed = points != self.points_ras or labels != self.labels
        self.points_ras, self.labels = points, labels
        return changed

    @property
    def empty(self) -> bool:
        return not self.points_ras and self.box_ras is None

    def predict(self, volume_node, segmentation_node=None, segment_id=None, slice_axis="axial", slice_to_ras=None,
                refine: bool = True) -> SlicePrediction | None:
        """Run the model on all prompts so far, feeding back its last logits (SAM's interactive loop)."""
        if self.empty:
            self.prediction = None
            return None
        now = self._prompts_now()
        shown = self._previews.get(now) if self.local_corrections else None
        if shown is not None and shown.volume_key == self.logic.volume_info(volume_node).key:
            self.prediction, self.choices, self._shown_for = shown, None, now
            return shown
        before, before_prompts = self.prediction, self._shown_for
        previous = before.logits if (before is not None and self.points_ras) else None
        if previous is not None and "mask" not in self.logic.prompt_kinds():
            previous = None
        self.prediction = self.logic.predict(
            volume_node, self.points_ras or None, self.labels or None, self.box_ras, slice_axis,
            sliceToRAS=slice_to_ras, mask_logits=previous, segmentationNode=segmentation_node,
            segmentId=segment_id, refine=refine)
        self._alternatives.discard(now)   # the model's answer, unless corrected from an alternative below
        if (self.local_corrections and before is not None and before.volume_key == self.prediction.volume_key
                and _one_click_more(before_prompts, now)):
            from sonosam.masks import local_correction

            def alone():   # the model's answer to the new click by itself (for a positive click it ignored)
                return self.logic.predict(volume_node, [self.points_ras[-1]], [1], None, slice_axis,
                                          sliceToRAS=slice_to_ras, refine=False).mask

            positive, image, window = self.labels[-1] == 1, None, None
            if not positive:   # only a negative click asks what the clicked spot looks like
                info = self.logic.volume_info(volume_node)
                image, window = self.logic.slice_image(info, self.prediction.geometry), info.window
            alternative = before_prompts in self._alternatives
            mask = local_correction(before.mask, self.prediction.mask, self.prediction.points_xy[-1],
                                    positive=positive, alone=alone, box=self.prediction.box_xy,
                                    earlier=[(xy, label == 1) for xy, label in zip(self.prediction.points_xy[:-1],
                                                                                   self.labels[:-1])],
                                    image=image, window=window, alternative=alternative)
            if alternative:
                self._alternatives.add(now)
            x, y = (int(round(float(v))) for v in self.prediction.points_xy[-1])
            on_image = 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]
            inside = on_image and bool(before.mask[y, x])
            followed = on_image and bool(self.prediction.mask[y, x]) == positive
            note = ("the click's change kept local to it" if followed and not np.array_equal(mask, before.mask) else
                    "the model did not follow this click: the mask changed around it instead (what the click alone "
                    "segments, or the disk up to the mask's edge); remove the marker to undo, or paint (Paint, Erase)"
                    if not np.array_equal(mask, before.mask) else
                    f"that pixel is already {'inside' if inside else 'outside'} the mask: nothing to correct there"
                    if inside == (self.labels[-1] == 1) else
                    "the model did not follow this click, nothing changed: click elsewhere in the wrong part, or "
                    "paint it (Paint, Erase)")
            self.prediction = replace(self.prediction, mask=mask, notes=self.prediction.notes + [note])
        self._previews[now], self._shown_for, self.choices = self.prediction, now, None
        return self.prediction

    def _prompts_now(self) -> tuple:
        return (tuple(tuple(p) for p in self.points_ras), tuple(self.labels),
                None if self.box_ras is None else tuple(tuple(c) for c in self.box_ras))

    def check(self, volume_node) -> SeedChoices | None:
        """The seed check of the current preview (``SegmentLogic.seed_choices``), kept in ``choices``. A box's
        first answer (no click yet) gives way to the check's suggestion where it makes one (the core's
        ``preview_index``; the model's answer stays first in the list: ``choose(0)``); other previews stay until
        ``choose``. A preview brought back (a click removed) keeps the check it had and is not switched again."""
        if self.prediction is None:
            self.choices = None
            return None
        now = self._prompts_now()
        known = self._checks.get(now)
        if known is not None and any(choice is self.prediction for choice in known.choices):
            self.choices = known
            return known
        from sonosam.seed_check import preview_index

        self.choices = self._checks[now] = self.logic.seed_choices(volume_node, self.prediction)
        shown = preview_index(self.choices.suggested, self.box_ras, self.points_ras)
        if shown:
            self.choose(shown)
        return self.choices

    @property
    def shown_choice(self) -> int:
        """Which of ``choices`` the preview is (0, the model's answer, when none is checked)."""
        choices = self.choices.choices if self.choices is not None else []
        return next((i for i, choice in enumerate(choices) if choice is self.prediction), 0)

    def choose(self, index: int) -> SlicePrediction:
        """Make choice `index` of the last check the preview (what Apply writes and Propagate starts from); the clicks
        that follow correct an alternative (index > 0) as one (``sonosam.masks.local_correction``'s ``alternative``)."""
        if self.choices is None or not 0 <= index < len(self.choices.choices):
            raise PromptError(f"No alternative {index} to choose: check the preview first.")
        self.prediction = self.choices.choices[index]
        now = self._prompts_now()
        self._previews[now] = self.prediction
        (self._alternatives.add if index else self._alternatives.discard)(now)   # its clicks correct it as one
        return self.prediction


def _one_click_more(before, now) -> bool:
    """True when the prompts ``now`` (``PromptSession._prompts_now``) are ``before``'s plus one click at the end."""
    if before is None:
        return False
    (points0, labels0, box0), (points1, labels1, box1) = before, now
    return box0 == box1 and len(points1) == len(points0) + 1 and points1[:-1] == points0 and labels1[:-1] == labels0


def show_preview(logic: SegmentLogic, prediction: SlicePrediction | None, volume_node, preview_node,
                 color=(1.0, 1.0, 0.0)):
    """Show a prediction in a preview segmentation node (one segment, cleared first); None clears it."""
    import slicer

    segmentation = preview_node.GetSegmentation()
    if segmentation.GetSegment("preview") is None:
        segmentation.AddEmptySegment("preview", "SonoSAM preview", list(color))
    else:
        slicer.vtkSlicerSegmentationsModuleLogic.ClearSegment(preview_node, "preview")
    if prediction is not None:
        logic.apply(prediction, volume_node, preview_node, "preview", "replace")
    return preview_node
