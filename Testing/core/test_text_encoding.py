"""Text files the tools write and read name their encoding (UTF-8): Windows' default code page is not UTF-8, and
names there (a Slicer volume's, a structure's) may be in any script. Python's own check (PEP 597:
``-X warn_default_encoding``) runs the writers and readers; a call of open() without an encoding in sonosam fails."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
import warnings
warnings.filterwarnings("error", category=EncodingWarning, module=r"sonosam\\.")   # ours, not the libraries'
from pathlib import Path
import numpy as np
from sonosam.evaluate.datasets import find_pairs
from sonosam.evaluate.report import write_per_image_csv, write_summary
from sonosam.track.outputs import write_confidence_csv, write_interventions

out = Path(sys.argv[1])
write_confidence_csv(out / "confidence.csv", np.array([[0.5], [np.nan]]), ["Größe 左心室"])
write_interventions(out, [])
write_per_image_csv([], out / "per_image.csv")
write_summary([], out)
(out / "list.csv").write_text("a.nrrd,a_seg.nrrd\\n", encoding="utf-8")
for name in ("a.nrrd", "a_seg.nrrd"):
    (out / name).write_bytes(b"")
find_pairs(out / "list.csv")
"""


def test_writers_and_readers_name_their_encoding(tmp_path):
    run = subprocess.run([sys.executable, "-X", "warn_default_encoding", "-c", SCRIPT, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Größe 左心室_confidence" in (tmp_path / "confidence.csv").read_text(encoding="utf-8")
