"""Writes that cannot half-happen, on real full and read-only file systems, and commands that fail fast.

A full disk is a 64 KiB tmpfs filled to its last block (mounted by the test: root here and in CI); where
mounting is not allowed those tests skip, and a file-size limit (RLIMIT_FSIZE, EFBIG on write) in a child
process exercises the same path without privileges. Each test checks the one-line error and that the folder
holds exactly what it held before (no temp file, no partial output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sonosam.errors import DataFileError

from . import corpus
from .conftest import snapshot

REPO = Path(__file__).resolve().parents[2]


def _writers(folder: Path):
    """Every kind of output the core writes, each into `folder`."""
    from sonosam import io
    from sonosam.track.outputs import write_sequence_nrrd

    volume = io.Volume(np.random.default_rng(0).normal(size=(20, 50, 50)).astype(np.float32))
    labels = np.zeros((4, 50, 50), np.uint8)
    labels[:, 10:40, 10:40] = 1
    return {
        "volume.nii": lambda: io.write_volume(volume, folder / "v.nii"),
        "volume.nii.gz": lambda: io.write_volume(volume, folder / "v.nii.gz"),
        "volume.nrrd": lambda: io.write_volume(volume, folder / "v.nrrd"),
        "seg.nrrd": lambda: io.write_segmentation(folder / "s.seg.nrrd", np.random.default_rng(1).integers(
            0, 3, (20, 50, 50)).astype(np.uint8)),
        "mask.png": lambda: io.write_segmentation(folder / "m.png", (np.random.default_rng(2).random((300, 300)) > .5)),
        "overlay.png": lambda: io.save_overlay_png(folder / "o.png", np.random.default_rng(3).integers(
            0, 255, (300, 300), dtype=np.uint8), box=(10, 10, 90, 90)),
        "report.json": lambda: io.write_text(folder / "r.json", json.dumps(list(range(30000)))),
        "sequence.seq.nrrd": lambda: write_sequence_nrrd(folder / "t.seq.nrrd", np.random.default_rng(4).integers(
            0, 3, (10, 80, 80)).astype(np.uint8), ["LV", "LA"]),
        "checkpoint.pth": lambda: _save_checkpoint(folder / "c.pth"),
    }


def _save_checkpoint(path: Path):
    """What `sonosam train` and the adapters use to write weights (torch.save through atomic_output)."""
    import torch

    from sonosam.train.checkpoint import _atomic_save

    _atomic_save({"w": torch.randn(50000)}, path)


WRITERS = ["volume.nii", "volume.nii.gz", "volume.nrrd", "seg.nrrd", "mask.png", "overlay.png", "report.json",
           "sequence.seq.nrrd", "checkpoint.pth"]


@pytest.mark.parametrize("kind", WRITERS)
def test_full_disk_gives_one_line_and_leaves_nothing(full_disk, kind):
    before = snapshot(full_disk)
    with pytest.raises(DataFileError) as caught:
        _writers(full_disk)[kind]()
    message = str(caught.value)
    assert "\n" not in message and "space" in message.lower() and "nothing was written" in message
    assert snapshot(full_disk) == before  # only the filler: no temp file, no partial output


@pytest.mark.parametrize("kind", ["volume.nii.gz", "seg.nrrd", "report.json"])
def test_read_only_folder_gives_one_line_and_leaves_nothing(read_only_dir, kind):
    before = snapshot(read_only_dir)
    with pytest.raises(DataFileError, match="read-only") as caught:
        _writers(read_only_dir)[kind]()
    assert "\n" not in str(caught.value)
    assert snapshot(read_only_dir) == before


def test_existing_file_is_never_replaced_without_overwrite(tmp_path):
    from sonosam import io

    target = tmp_path / "v.nii.gz"
    target.write_bytes(b"precious")
    with pytest.raises(DataFileError, match="already exists"):
        io.write_volume(io.Volume(np.ones((2, 9, 9), np.float32)), target)
    assert target.read_bytes() == b"precious" and sorted(os.listdir(tmp_path)) == ["v.nii.gz"]
    io.write_volume(io.Volume(np.ones((2, 9, 9), np.float32)), target, overwrite=True)
    assert io.read_volume(target).shape == (2, 9, 9)


def test_full_disk_by_file_size_limit(tmp_path):
    """The same guarantee without mounting anything: a child process whose file-size limit is 4 KiB gets EFBIG
    (Python writers) or a short file (ITK's NIfTI writer, caught by reading it back) on every large write."""
    script = textwrap.dedent(f"""
        import resource, sys, os
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'Testing')!r})
        from robustness.test_writes import _writers, WRITERS
        from pathlib import Path
        from sonosam.errors import DataFileError
        folder = Path({str(tmp_path)!r})
        writers = _writers(folder)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        for kind in WRITERS:
            try:
                writers[kind]()
                print(kind, "WROTE")
            except DataFileError as error:
                print(kind, "REFUSED", "\\n" in str(error), "nothing was written" in str(error))
        print("LEFT", sorted(os.listdir(folder)))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    refused = [line for line in lines if "REFUSED" in line]
    assert len(refused) == len(WRITERS), done.stdout
    assert all(line.endswith("False True") for line in refused), done.stdout
    assert lines[-1] == "LEFT []", done.stdout


@pytest.mark.slow
def test_segment_on_a_full_disk_writes_nothing(full_disk, tmp_path, run_cli):
    """End to end: the model runs, then both outputs fail to land; neither is left behind."""
    image = corpus.png(tmp_path / "in.png", corpus.textured(96, 96))
    before = snapshot(full_disk)
    outcome = run_cli("--device", "cpu", "segment", image, "--box", "20,20,76,76", "-o", full_disk / "mask.nii.gz")
    outcome.assert_refused("space", "nothing was written")
    assert snapshot(full_disk) == before


@pytest.mark.slow
def test_refine_on_a_full_disk_writes_nothing(full_disk, tmp_path, run_cli):
    """The same for refine, whose mask used to stay when its overlay found no space."""
    image = corpus.png(tmp_path / "in.png", corpus.textured(96, 96))
    coarse = corpus.png(tmp_path / "coarse.png", (corpus.textured(96, 96) > 150).astype(np.uint8) * 255)
    before = snapshot(full_disk)
    outcome = run_cli("--device", "cpu", "refine", image, "--coarse", coarse, "--steps", "2", "-o",
                      full_disk / "mask.nii.gz")
    outcome.assert_refused("space", "nothing was written")
    assert snapshot(full_disk) == before


def test_refine_into_a_read_only_folder_is_refused_before_the_model(read_only_dir, tmp_path, run_cli):
    image = corpus.png(tmp_path / "in.png", corpus.textured(96, 96))
    run_cli("refine", image, "--coarse", image, "-o", read_only_dir / "sub" / "mask.png").assert_refused("read-only")


def test_segment_into_a_read_only_folder_is_refused_before_the_model(read_only_dir, tmp_path, run_cli):
    image = corpus.png(tmp_path / "in.png", corpus.textured(96, 96))
    run_cli("segment", image, "--box", "20,20,76,76", "-o", read_only_dir / "mask.png").assert_refused("read-only")


def test_failed_track_leaves_no_output_folder(tmp_path, run_cli):
    loop = corpus.dicom(tmp_path / "loop.dcm")
    out = tmp_path / "new" / "deeper"
    run_cli("track", loop, "--box", "30,30,90,90", "-o", out).assert_refused("outside")
    assert not (tmp_path / "new").exists()


def test_output_set_removes_what_a_failed_run_created(tmp_path):
    from sonosam.io import output_set, write_text

    folder = tmp_path / "made" / "here"
    with pytest.raises(RuntimeError):
        with output_set([folder / "a.txt", folder / "b.txt"], folder=folder):
            write_text(folder / "a.txt", "first")
            raise RuntimeError("the second writer failed")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.environ.get("SONOSAM_DEVICE") not in (None, ""), reason="device forced by the environment")
def test_device_this_machine_lacks_is_named(tmp_path, run_cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    image = corpus.png(tmp_path / "in.png", corpus.textured(96, 96))
    outcome = run_cli("--device", "cuda", "segment", image, "--box", "20,20,76,76", "-o", tmp_path / "m.png")
    outcome.assert_refused("cuda", "available here: cpu")
    assert sorted(os.listdir(tmp_path)) == ["in.png"]


FAST_ERRORS = [
    ["track", "loop.dcm", "--frames", "0", "-o", "out"],
    ["propagate", "vol.nrrd", "--slice", "3", "--box", "1,1,9,9", "--min-score", "nan", "-o", "o.seg.nrrd"],
    ["segment", "missing.png", "--box", "1,1,9,9", "-o", "o.png"],
    ["segment", "bomb.dcm", "--box", "1,1,9,9", "-o", "o.png"],
    ["segment", "small.png", "--box", "100,1,190,9", "-o", "o.png"],
    ["--device", "bogus", "segment", "small.png", "--box", "1,1,9,9", "-o", "o.png"],
    ["segment", "vol.nrrd", "--slice", "3", "--box", "1,1,9,9", "-o", "o.png"],
]


@pytest.mark.parametrize("argv", FAST_ERRORS, ids=["frames-0", "min-score-nan", "missing", "dicom-bomb",
                                                   "box-outside", "device-bogus", "png-for-a-volume"])
def test_errors_come_before_torch_in_a_real_process(tmp_path, argv):
    """Fail fast: a real `sonosam` process refuses these without importing torch (so in well under a second
    on an idle machine), with exit status 2, one line and no traceback."""
    corpus.png(tmp_path / "small.png", corpus.textured(64, 64))
    corpus.dicom(tmp_path / "bomb.dcm", rows=65535, columns=65535, n_frames=1000)
    corpus.volume(tmp_path / "vol.nrrd", corpus.textured_volume())
    script = ("import sys\nfrom sonosam.cli import main\ncode = main(sys.argv[1:])\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["bomb.dcm", "small.png", "vol.nrrd"]


@pytest.mark.slow   # loads the model in a child process
def test_sigterm_mid_write_leaves_nothing(tmp_path):
    """`kill` (SIGTERM) while the mask is being written cleans up as Ctrl-C does: no hidden temp file, no output
    (it left the temp file behind: the cleanup never ran)."""
    import signal

    volume = corpus.volume(tmp_path / "in.nrrd", corpus.textured_volume())
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent("""
        import sys, time
        import SimpleITK as sitk
        write = sitk.WriteImage
        def slow(image, path, *args, **kwargs):   # the temp file is on disk: say so, then take a while
            write(image, path, *args, **kwargs)
            print("WRITING", file=sys.stderr, flush=True)
            time.sleep(60)
        sitk.WriteImage = slow
        from sonosam.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", script, "--device", "cpu", "segment", str(volume), "--slice", "5",
                              "--box", "10,10,40,40", "-o", str(out / "m.nii.gz")], stderr=subprocess.PIPE, text=True,
                             env=env)
    try:
        for line in child.stderr:
            if line.startswith("WRITING"):
                break
        assert os.listdir(out), "the temp file should exist while the write takes its time"
        child.send_signal(signal.SIGTERM)
        child.stderr.read()
        assert child.wait(60) == 143   # 128 + SIGTERM, as a shell reports a kill
    finally:
        child.kill()
    assert os.listdir(out) == []
