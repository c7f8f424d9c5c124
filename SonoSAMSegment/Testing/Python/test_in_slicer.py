"""SonoSAMSegment checks that need no pytest: the Segment Editor masking checks (Testing/slicer/
masking_checks.py) on Slicer's own scene inside Slicer (registered with slicer_add_python_unittest), or on
a headless slicer-core scene elsewhere (``python SonoSAMSegment/Testing/Python/test_in_slicer.py``)."""

import os
import sys
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _scene():
    """Slicer's scene when running inside Slicer, else a new headless one (and its closer)."""
    import slicer

    if getattr(slicer, "mrmlScene", None) is not None:
        return slicer.mrmlScene, (lambda: None)
    from mrml_scene import make_scene

    ctx = make_scene()
    return ctx.scene, ctx.close


class SonoSAMSegmentMaskingInSlicer(unittest.TestCase):
    def setUp(self):
        for folder in (os.path.join(ROOT, "Testing", "slicer"), os.path.join(ROOT, "SonoSAMSegment"), ROOT):
            if folder not in sys.path:
                sys.path.insert(0, folder)

    def test_masking_settings_are_honoured(self):
        import masking_checks

        scene, close = _scene()
        try:
            for check in masking_checks.CHECKS:
                with self.subTest(check.__name__):
                    check(scene)
        finally:
            close()


if __name__ == "__main__":
    unittest.main()
