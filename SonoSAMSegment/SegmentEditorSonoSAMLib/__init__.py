"""The SonoSAM Segment Editor effect (registered by the SonoSAMSegment module at Slicer start-up)."""

from .SegmentEditorEffect import SegmentEditorEffect  # noqa: F401
