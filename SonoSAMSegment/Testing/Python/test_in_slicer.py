"""Run the headless SonoSAMSegment logic tests (Testing/slicer) inside a real Slicer's Python, so the same
checks hold against Slicer's full build (registered with slicer_add_python_unittest)."""

import os
import sys
import unittest


class SonoSAMSegmentLogicInSlicer(unittest.TestCase):
    def test_logic_suite(self):
        import pytest  # installed with the dependencies (pip_install pytest if missing)

        root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
        suite = os.path.join(root, "Testing", "slicer")
        sys.path[:0] = [suite, os.path.join(root, "SonoSAMSegment"), root]
        self.assertEqual(pytest.main(["-q", suite]), 0)


if __name__ == "__main__":
    unittest.main()
