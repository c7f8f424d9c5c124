"""Hostile and careless input to every command: each case must end with exit status 2, one line on stderr
that names the problem, no traceback, and the file system exactly as it was (no partial, temp or replaced
files, no empty output folder). Files are generated at test time (corpus.py).

Almost every case is refused before torch is imported or a model is loaded (fail fast); the few that need
the model (a checkpoint's content, the device) say so in their name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from . import corpus
from .conftest import snapshot


def good_png(tmp: Path) -> Path:
    return corpus.png(tmp / "good.png", corpus.textured())


def good_loop(tmp: Path) -> Path:
    return corpus.dicom(tmp / "loop.dcm")


def good_volume(tmp: Path, suffix: str = ".nrrd") -> Path:
    return corpus.volume(tmp / f"vol{suffix}", corpus.textured_volume())


def segment(image, *extra):
    return ["segment", image, "--box", "10,10,40,40", "-o", Path(image).parent / "out.seg.nrrd", *extra]


def propagate(volume, *extra, box="10,10,40,40", slice_=5):
    return ["propagate", volume, "--slice", slice_, "--box", box, "-o", Path(volume).parent / "out.seg.nrrd", *extra]


def track(cine, *extra):
    return ["track", cine, "--object", "LV", "--box", "10,10,40,40", "-o", Path(cine).parent / "tracked", *extra]


def _existing(path: Path, data: bytes = b"precious") -> Path:
    path.write_bytes(data)
    return path


def _pair(tmp: Path, image: np.ndarray, label: np.ndarray, label_name: str = "a_label.png") -> str:
    corpus.png(tmp / "a.png", image)
    if label.dtype == np.float32:
        corpus.float_tiff(tmp / label_name, label)
    else:
        corpus.png(tmp / label_name, label)
    return f"{tmp / 'a.png'},{tmp / label_name}"


def _disc_label(h=64, w=64):
    return (corpus.textured(h, w) > 150).astype(np.uint8)


def _lesion_volume(tmp: Path) -> tuple[Path, Path]:
    """A volume and its 0/1 label map (a disc on every slice)."""
    image = corpus.textured_volume()
    return good_volume(tmp), corpus.volume(tmp / "lab.nrrd", (image > 150).astype(np.uint8))


def _assist(tmp: Path, *extra):
    volume, labels = _lesion_volume(tmp)
    return ["train", "assist", volume, "--labels", labels, "-o", tmp / "a.pth", *extra]


def _ppn(tmp: Path, *extra):
    volume, labels = _lesion_volume(tmp)
    return ["train", "ppn", "--data", f"{volume},{labels}", "-o", tmp / "p.ppn.pt", *extra]


def _ppn_file(tmp: Path) -> Path:
    """A real (untrained) prompt predictor file that knows class A."""
    from sonosam.ppn import PromptPredictor, save_ppn

    return save_ppn(PromptPredictor(["A"]), tmp / "a.ppn.pt")


# (id, words the one-line message must contain, argv builder taking the case's folder)
CASES = [
    # ------------------------------------------------------------------ image files (segment, the input gate)
    ("image-missing", ["does not exist"], lambda t: segment(t / "nope.png")),
    ("image-is-folder", ["is a folder"], lambda t: (t / "x.png").mkdir() or segment(t / "x.png")),
    ("image-empty", ["empty", "0 bytes"], lambda t: _existing(t / "e.png", b"") and segment(t / "e.png")),
    ("image-truncated-png", ["truncated"], lambda t: segment(corpus.truncated_png(t / "t.png"))),
    ("image-random-bytes-png", ["not a png"], lambda t: _existing(t / "r.png", bytes(range(256)) * 8) and segment(t / "r.png")),
    ("image-text-as-png", ["not a png"], lambda t: _existing(t / "notes.png", b"hello\n" * 50) and segment(t / "notes.png")),
    ("image-jpeg-named-png", ["named like a png", "jpeg"], lambda t: corpus.jpeg(t / "j.png") and segment(t / "j.png")),
    ("image-png-bomb-60000", ["decompression bomb", "3600000000 pixels"],
     lambda t: segment(corpus.png_declaring(t / "bomb.png", 60000, 60000))),
    ("image-png-bomb-pil-guard", ["decompression bomb"],
     lambda t: segment(corpus.png_declaring(t / "bomb2.png", 14000, 14000))),
    ("image-one-pixel-high", ["too small", "at least 8"], lambda t: segment(corpus.png(t / "thin.png", corpus.textured(1, 500)))),
    ("image-8x6000", ["too elongated"], lambda t: segment(corpus.png(t / "long.png", corpus.textured(8, 6000)))),
    ("image-4x4", ["too small"], lambda t: segment(corpus.png(t / "tiny.png", corpus.textured(4, 4)))),
    ("image-constant", ["constant"], lambda t: segment(corpus.png(t / "flat.png", np.full((64, 64), 7, np.uint8)))),
    ("image-float-tiff-nan", ["nan"], lambda t: segment(corpus.float_tiff(t / "nan.tif", np.where(
        corpus.textured() > 150, np.nan, 1.0)))),
    ("image-npy-nan", ["nan"], lambda t: segment(corpus.npy(t / "nan.npy", np.full((64, 64), np.nan, np.float32)))),
    ("image-npy-pickled", ["python objects", "could run code"],
     lambda t: segment(corpus.npy(t / "obj.npy", np.array([corpus.NotTensors()] * 4, dtype=object)))),
    ("image-npy-not-numpy", ["not a numpy"], lambda t: _existing(t / "fake.npy", b"\x93NUMPYgarbage" * 10) and segment(t / "fake.npy")),
    ("image-npy-random", ["not a numpy .npy"], lambda t: _existing(t / "r.npy", bytes(range(200))) and segment(t / "r.npy")),
    ("image-npy-truncated", ["truncated"], lambda t: segment(corpus.truncated_npy(t / "cut.npy"))),
    ("image-npy-complex", ["complex"], lambda t: segment(corpus.npy(t / "c.npy", np.zeros((64, 64), np.complex64)))),
    ("image-npy-5d", ["shape"], lambda t: segment(corpus.npy(t / "five.npy", np.zeros((2, 2, 2, 2, 2), np.uint8)))),
    ("image-npy-huge-header", ["memory budget"], lambda t: segment(_npy_declaring(t / "huge.npy", (100000, 100000, 100)))),
    ("image-dicom-bomb", ["1000 x 65535 x 65535", "memory budget"],
     lambda t: segment(corpus.dicom(t / "bomb.dcm", rows=65535, columns=65535, n_frames=1000))),
    ("image-dicom-no-pixels", ["no pixel data"], lambda t: segment(corpus.dicom(t / "nopix.dcm", with_pixels=False))),
    ("image-dicom-truncated-pixels", ["pixel data"],
     lambda t: segment(corpus.dicom(t / "short.dcm", pixel_data=b"\x00" * 100))),
    ("image-text-as-dicom", ["dicom"], lambda t: _existing(t / "note.dcm", b"not dicom at all\n" * 20) and segment(t / "note.dcm")),
    ("image-frame-on-single-png", ["single 2d image", "--frame"], lambda t: segment(good_png(t), "--frame", "3")),
    ("image-frame-beyond-loop", ["frame 500", "outside 0..3"], lambda t: segment(good_loop(t), "--frame", "500")),
    ("image-frame-negative", ["at least 0"], lambda t: segment(good_loop(t), "--frame", "-1")),
    ("image-slice-beyond-volume", ["slice 99", "outside"], lambda t: segment(good_volume(t), "--slice", "99")),
    ("image-unknown-format", ["not an image file"], lambda t: _existing(t / "data.xyz", b"abc" * 100) and segment(t / "data.xyz")),
    ("image-nifti-inf", ["nan or infinite"],
     lambda t: segment(corpus.nifti(t / "inf.nii.gz", np.where(corpus.textured_volume() > 150, np.inf, 1.0)))),
    ("image-nifti-nan-uncompressed", ["nan or infinite"],
     lambda t: segment(corpus.nifti(t / "nan.nii", np.where(corpus.textured_volume() > 150, np.nan, 1.0)))),
    ("image-nifti-truncated", ["truncated", "not written completely"],
     lambda t: segment(corpus.truncated_nifti(t / "cut.nii"))),
    ("image-nifti-gz-truncated", ["truncated", "not written completely"],
     lambda t: segment(corpus.truncated_nifti(t / "cut.nii.gz"))),
    ("image-nifti-gz-stream-cut", ["truncated", "not written completely"],
     lambda t: segment(corpus.truncated_nifti(t / "cut2.nii.gz", cut_stream=True))),
    # ------------------------------------------------------------------------------------- prompts
    ("box-nan", ["finite"], lambda t: ["segment", good_png(t), "--box", "nan,1,20,20", "-o", t / "o.png"]),
    ("box-inverted", ["x0 < x1"], lambda t: ["segment", good_png(t), "--box", "40,40,10,10", "-o", t / "o.png"]),
    ("box-three-values", ["x0,y0,x1,y1"], lambda t: ["segment", good_png(t), "--box", "1,2,3", "-o", t / "o.png"]),
    ("box-not-numbers", ["x0,y0,x1,y1"], lambda t: ["segment", good_png(t), "--box", "a,b,c,d", "-o", t / "o.png"]),
    ("box-outside-image", ["outside the 64x64 image"], lambda t: ["segment", good_png(t), "--box", "50,50,90,90", "-o", t / "o.png"]),
    ("point-label-5", ["label 0 or 1"], lambda t: ["segment", good_png(t), "--point", "5,5,5", "-o", t / "o.png"]),
    ("point-inf", ["finite"], lambda t: ["segment", good_png(t), "--point", "inf,3", "-o", t / "o.png"]),
    ("point-outside-image", ["outside the 64x64 image"], lambda t: ["segment", good_png(t), "--point", "500,3", "-o", t / "o.png"]),
    ("no-prompt", ["give a prompt"], lambda t: ["segment", good_png(t), "-o", t / "o.png"]),
    ("segment-seed-choice-unchecked", ["--seed-choice", "leave out --no-seed-check"],
     lambda t: ["segment", good_png(t), "--box", "10,10,40,40", "--seed-choice", "1", "--no-seed-check", "-o",
                t / "o.png"]),
    # ------------------------------------------------------------------------------ numeric options
    ("min-score-nan", ["--min-score", "finite"], lambda t: propagate(good_volume(t), "--min-score", "nan")),
    ("min-score-above-1", ["--min-score", "at most 1"], lambda t: propagate(good_volume(t), "--min-score", "1.5")),
    ("max-slices-negative", ["--max-slices", "at least 1"], lambda t: propagate(good_volume(t), "--max-slices", "-1")),
    ("max-slices-zero", ["--max-slices", "at least 1"], lambda t: propagate(good_volume(t), "--max-slices", "0")),
    ("span-not-two", ["--span", "FIRST,LAST"], lambda t: propagate(good_volume(t), "--span", "3")),
    ("span-words", ["--span", "FIRST,LAST"], lambda t: propagate(good_volume(t), "--span", "a,b")),
    ("span-misses-seed", ["--span", "FIRST <= --slice 5 <= LAST"], lambda t: propagate(good_volume(t), "--span", "6,9")),
    ("span-beyond", ["--span", "within 0..11"], lambda t: propagate(good_volume(t), "--span", "2,60")),
    ("seed-choice-negative", ["--seed-choice", "at least 0"], lambda t: propagate(good_volume(t), "--seed-choice", "-1")),
    ("seed-choice-beyond-a-click", ["--seed-choice 9", "offers 2 masks for this prompt", "the click is in"],
     lambda t: ["propagate", good_volume(t), "--slice", 5, "--point", "20,20", "--model", "litemedsam_clicks",
                "--seed-choice", "9", "-o", t / "out.seg.nrrd"]),
    ("seed-choice-unchecked", ["--seed-choice", "--no-seed-check"],
     lambda t: propagate(good_volume(t), "--seed-choice", "1", "--no-seed-check")),
    ("propagate-slice-negative", ["--slice", "at least 0"], lambda t: propagate(good_volume(t), slice_=-3)),
    ("propagate-slice-beyond", ["--slice 40", "outside"], lambda t: propagate(good_volume(t), slice_=40)),
    ("propagate-box-outside", ["outside the 48x48 image"], lambda t: propagate(good_volume(t), box="30,30,60,60")),
    ("propagate-nifti-inf", ["nan or infinite"], lambda t: propagate(corpus.nifti(
        t / "inf.nii.gz", np.where(corpus.textured_volume() > 150, np.inf, 1.0)))),
    ("propagate-nrrd-nan", ["nan or infinite"], lambda t: propagate(corpus.volume(
        t / "nan.nrrd", np.where(corpus.textured_volume() > 150, np.nan, 1.0).astype(np.float32)))),
    ("propagate-4d", ["4d"], lambda t: propagate(corpus.nifti(t / "v4.nii", np.ones((3, 4, 20, 20), np.float32)))),
    ("propagate-vector", ["components"], lambda t: propagate(corpus.volume(t / "v3.nrrd", np.zeros((3, 4, 20, 20), np.float32)))),
    ("propagate-missing-adapters", ["adapter weights file", "does not exist"],
     lambda t: propagate(good_volume(t), "--adapters", t / "none.pth")),
    ("track-frames-zero", ["--frames", "at least 1"], lambda t: track(good_loop(t), "--frames", "0")),
    ("track-frames-negative", ["--frames", "at least 1"], lambda t: track(good_loop(t), "--frames", "-2")),
    ("track-threshold-2", ["--threshold", "at most 1"], lambda t: track(good_loop(t), "--threshold", "2")),
    ("track-threshold-nan", ["--threshold", "finite"], lambda t: track(good_loop(t), "--threshold", "nan")),
    ("track-model-every-zero", ["--model-every", "at least 1"], lambda t: track(good_loop(t), "--model-every", "0")),
    ("evaluate-clicks-zero", ["--clicks", "at least 1"],
     lambda t: ["evaluate", "--data", _pair(t, corpus.textured(), _disc_label()), "--clicks", "0", "-o", t / "rep"]),
    ("evaluate-jitter-nan", ["--box-jitter", "finite"],
     lambda t: ["evaluate", "--data", _pair(t, corpus.textured(), _disc_label()), "--box-jitter", "nan", "-o", t / "rep"]),
    ("evaluate-min-area-negative", ["--min-area", "at least 1"],
     lambda t: ["evaluate", "--data", _pair(t, corpus.textured(), _disc_label()), "--min-area", "-5", "-o", t / "rep"]),
    ("train-epochs-zero", ["--epochs", "at least 1"],
     lambda t: ["train", "decoder", "--data", "colin27", "--epochs", "0", "-o", t / "m.pth"]),
    ("train-lr-negative", ["--lr", "above 0"], lambda t: ["train", "decoder", "--data", "colin27", "--lr", "-1", "-o", t / "m.pth"]),
    ("train-lr-inf", ["--lr", "finite"], lambda t: ["train", "decoder", "--data", "colin27", "--lr", "inf", "-o", t / "m.pth"]),
    ("train-val-fraction-1", ["--val-fraction", "below 1"],
     lambda t: ["train", "decoder", "--data", "colin27", "--val-fraction", "1", "-o", t / "m.pth"]),
    ("adapters-steps-zero", ["--steps", "at least 1"],
     lambda t: ["train", "adapters", "--images", "a.nrrd", "--labels", "b.nrrd", "--label-value", "1", "--steps", "0",
                "-o", t / "a.pth"]),
    # ------------------------------------------------------------------- device and backend (parse time)
    ("device-bogus", ["--device", "cpu, cuda, cuda:n or mps"], lambda t: ["--device", "bogus", *segment(good_png(t))]),
    ("device-cpu-7", ["--device"], lambda t: ["--device", "cpu:7", *segment(good_png(t))]),
    ("backend-bogus", ["--backend", "invalid choice"], lambda t: ["--backend", "bogus", *segment(good_png(t))]),
    # ------------------------------------------------------------------ names that reach file headers
    ("name-newline", ["control character"], lambda t: propagate(good_volume(t), "--name", "LV\nspace directions: none")),
    ("name-pipe", ["'|'"], lambda t: propagate(good_volume(t), "--name", "a|b")),
    ("name-empty", ["empty"], lambda t: propagate(good_volume(t), "--name", "  ")),
    ("name-too-long", ["characters long"], lambda t: propagate(good_volume(t), "--name", "x" * 500)),
    ("object-newline", ["control character"],
     lambda t: ["track", good_loop(t), "--object", "LV\nkinds: x", "--box", "1,1,20,20", "-o", t / "tr"]),
    ("object-nul", ["control character"],
     lambda t: ["track", good_loop(t), "--object", "LV\x07", "--box", "1,1,20,20", "-o", t / "tr"]),
    ("train-name-newline", ["control character"],
     lambda t: ["train", "decoder", "--data", "colin27", "--name", "a\nb", "-o", t / "m.pth"]),
    # ------------------------------------------------------------------------------------- outputs
    ("output-exists", ["already exists", "--overwrite"],
     lambda t: _existing(t / "out.seg.nrrd") and segment(good_png(t))),
    ("output-overlay-exists", ["already exists", "--overwrite"],
     lambda t: _existing(t / "out_overlay.png") and segment(good_png(t))),
    ("output-png-for-a-volume", [".png", "volume", ".nii.gz"],
     lambda t: ["segment", good_volume(t), "--slice", "5", "--box", "10,10,40,40", "-o", t / "m.png"]),
    ("auto-ppn-missing", ["prompt predictor", "does not exist"],
     lambda t: ["segment", good_png(t), "--auto", "LV", "--ppn", t / "nope.ppn.pt", "-o", t / "m.png"]),
    ("output-overlay-of-another-version-exists", ["already exists"],   # out.v1's overlay is not out.v2's
     lambda t: _existing(t / "out.v2_overlay.png") and ["segment", good_png(t), "--box", "10,10,40,40", "-o",
                                                       t / "out.v2.nii.gz"]),
    ("output-is-input", ["is the input"], lambda t: ["segment", good_png(t), "--box", "10,10,40,40", "-o", t / "good.png"]),
    ("output-is-folder", ["is a folder"],
     lambda t: (t / "o.png").mkdir() or ["segment", good_png(t), "--box", "10,10,40,40", "-o", t / "o.png"]),
    ("output-bad-suffix", ["must end with"], lambda t: ["segment", good_png(t), "--box", "10,10,40,40", "-o", t / "o.txt"]),
    ("output-parent-is-file", ["is a file"],
     lambda t: _existing(t / "afile") and ["segment", good_png(t), "--box", "10,10,40,40", "-o", t / "afile" / "o.png"]),
    ("propagate-output-exists", ["already exists"], lambda t: _existing(t / "out.seg.nrrd") and propagate(good_volume(t))),
    ("propagate-output-is-input", ["is the input"],
     lambda t: ["propagate", good_volume(t), "--slice", "3", "--box", "1,1,20,20", "-o", t / "vol.nrrd"]),
    ("track-output-holds-results", ["already holds", "--overwrite"],
     lambda t: (t / "tracked").mkdir() or _existing(t / "tracked" / "summary.json") and track(good_loop(t))),
    ("track-output-is-file", ["is a file"], lambda t: _existing(t / "tracked") and track(good_loop(t))),
    ("track-output-would-replace-input", ["is the input"],
     lambda t: (t / "tracked").mkdir() or ["track", _existing(t / "tracked" / "overlay.gif"), "--object", "LV", "--box",
                                           "1,1,20,20", "-o", t / "tracked", "--overwrite"]),
    ("evaluate-output-would-replace-input", ["is the input"],
     lambda t: (t / "rep").mkdir() or ["evaluate", "--data", f"{good_png(t)},{_existing(t / 'rep' / 'summary.csv')}",
                                       "-o", t / "rep", "--overwrite"]),
    ("evaluate-output-holds-report", ["already holds"],
     lambda t: (t / "rep").mkdir() or _existing(t / "rep" / "summary.md") and
     ["evaluate", "--data", _pair(t, corpus.textured(), _disc_label()), "-o", t / "rep"]),
    ("train-output-exists", ["already exists", "--overwrite"],
     lambda t: _existing(t / "m.pth") and ["train", "decoder", "--data", "colin27", "-o", t / "m.pth"]),
    ("train-output-json-exists", ["already exists"],
     lambda t: _existing(t / "m.json") and ["train", "distill", "--teacher", "litemedsam", "--data", "colin27", "-o", t / "m.pth"]),
    ("train-output-not-pth", [".pth"], lambda t: ["train", "decoder", "--data", "colin27", "-o", t / "m.txt"]),
    ("adapters-output-exists", ["already exists"],
     lambda t: _existing(t / "a.pth") and ["train", "adapters", "--images", good_volume(t), "--labels", good_volume(t),
                                           "--label-value", "1", "-o", t / "a.pth"]),
    ("train-resume-without-resume-file", ["already exists", "--overwrite"],   # no OUT.pth.resume: a fresh run
     lambda t: _existing(t / "m.pth") and ["train", "decoder", "--data", "colin27", "--resume", "-o", t / "m.pth"]),
    ("assist-output-exists", ["already exists", "--overwrite"],
     lambda t: _existing(t / "a.pth") and ["train", "assist", good_volume(t), "--labels", good_volume(t, ".nii.gz"),
                                           "--slices", "2,3", "-o", t / "a.pth"]),
    ("assist-output-is-labels", ["is the input"],
     lambda t: ["train", "assist", good_volume(t), "--labels", _existing(t / "lab.pth"), "--slices", "2,3", "-o",
                t / "lab.pth", "--overwrite"]),
    ("ppn-output-exists", ["already exists", "--overwrite"],
     lambda t: _existing(t / "p.ppn.pt") and ["train", "ppn", "--data", "colin27", "--class", "Caudate_L", "-o",
                                              t / "p.ppn.pt"]),
    ("ppn-output-not-pt", [".pt"],
     lambda t: ["train", "ppn", "--data", f"{good_volume(t)},{good_volume(t, '.nii.gz')}", "--class", "A=1", "-o",
                t / "vol.nii.gz"]),
    ("ppn-stride-zero", ["--stride", "at least 1"],
     lambda t: ["train", "ppn", "--data", "colin27", "--class", "Caudate_L", "--stride", "0", "-o", t / "p.ppn.pt"]),
    ("refine-output-is-input", ["is the input"],
     lambda t: ["refine", good_png(t), "--coarse", corpus.png(t / "c.png", _disc_label() * 255), "-o", t / "good.png",
                "--overwrite"]),
    ("refine-output-is-coarse", ["is the input"],
     lambda t: ["refine", good_png(t), "--coarse", corpus.png(t / "c.png", _disc_label() * 255), "-o", t / "c.png",
                "--overwrite"]),
    ("refine-steps-negative", ["--steps", "at least 1"],
     lambda t: ["refine", good_png(t), "--coarse", corpus.png(t / "c.png", _disc_label() * 255), "--steps", "-3",
                "-o", t / "m.png"]),
    ("refine-seed-negative", ["--seed", "at least 0"],
     lambda t: ["refine", good_png(t), "--coarse", corpus.png(t / "c.png", _disc_label() * 255), "--seed", "-1",
                "-o", t / "m.png"]),
    ("refine-coarse-in-percent", ["floats up to 100", "divide it by its scale"],
     lambda t: ["refine", good_png(t), "--coarse", corpus.float_tiff(t / "c.tif", _disc_label() * 100.0),
                "-o", t / "m.png"]),
    ("segment-auto-with-box", ["--box does not go with --auto"],
     lambda t: ["segment", good_png(t), "--auto", "A", "--ppn", _ppn_file(t), "--box", "10,10,40,40", "-o", t / "m.png"]),
    ("segment-auto-unknown-class", ["knows A, not 'B'"],
     lambda t: ["segment", good_png(t), "--auto", "B", "--ppn", _ppn_file(t), "-o", t / "m.png"]),
    ("assist-one-slice", ["--slices 2", "2-5 different"], lambda t: _assist(t, "--slices", "2")),
    ("assist-same-slice-twice", ["--slices 2,2", "2-5 different"], lambda t: _assist(t, "--slices", "2,2")),
    ("assist-six-slices", ["2-5 different"], lambda t: _assist(t, "--slices", "1,2,3,4,5,6")),
    ("assist-seed-negative", ["--seed", "at least 0"], lambda t: _assist(t, "--slices", "2,3", "--seed", "-1")),
    ("assist-kinds-unknown", ["--kinds box,clicks", "'clicks'"],
     lambda t: _assist(t, "--slices", "2,3", "--kinds", "box,clicks")),
    ("ppn-class-value-not-a-number", ["--class Lesion=abc", "whole number"], lambda t: _ppn(t, "--class", "Lesion=abc")),
    ("ppn-class-on-no-slice", ["Lesion=7", "no training slice"], lambda t: _ppn(t, "--class", "Lesion=7")),
    ("ppn-aal-name-without-colin27", ["--class Hippocampus_L", "NAME=VALUE", "--data colin27"],
     lambda t: _ppn(t, "--class", "Hippocampus_L")),
    ("ppn-lr-negative", ["--lr", "above 0"], lambda t: _ppn(t, "--class", "Lesion=1", "--lr", "-1")),
    ("ppn-lr-zero", ["--lr", "above 0"], lambda t: _ppn(t, "--class", "Lesion=1", "--lr", "0")),
    ("ppn-seed-negative", ["--seed", "at least 0"], lambda t: _ppn(t, "--class", "Lesion=1", "--seed", "-1")),
    ("ppn-colin27-other-axis", ["colin27", "axial", "--axis i"],
     lambda t: ["train", "ppn", "--data", "colin27", "--class", "Caudate_L", "--axis", "i", "-o", t / "p.ppn.pt"]),
    ("evaluate-clicks-beyond-100", ["--clicks", "at most 100"],
     lambda t: ["evaluate", "--data", "colin27", "--clicks", "1001", "-o", t / "rep"]),
    ("serve-port-beyond-65535", ["--port", "at most 65535"], lambda t: ["serve", "--port", "99999"]),
    ("serve-jobs-zero", ["--jobs", "at least 1"], lambda t: ["serve", "--jobs", "0"]),
    ("serve-max-request-nan", ["--max-request-mib", "finite"], lambda t: ["serve", "--max-request-mib", "nan"]),
    ("serve-cache-negative", ["--cache-mib", "at least 0"], lambda t: ["serve", "--cache-mib", "-5"]),
    # ------------------------------------------------------------------------------------ tracking
    ("track-single-png", ["not a loop"], lambda t: track(good_png(t))),
    ("track-npy-pickled", ["could run code"], lambda t: track(corpus.npy(t / "o.npy", np.array([None, 1], dtype=object)))),
    ("track-npy-2d", ["not a loop"], lambda t: track(corpus.npy(t / "f.npy", corpus.textured()))),
    ("track-duplicate-names", ["must differ"],
     lambda t: ["track", good_loop(t), "--object", "A", "--box", "1,1,20,20", "--object", "A", "--box", "2,2,20,20",
                "-o", t / "tr"]),
    ("track-object-without-prompt", ["has no prompt"],
     lambda t: ["track", good_loop(t), "--object", "A", "--object", "B", "--box", "1,1,20,20", "-o", t / "tr"]),
    ("track-box-outside", ["outside the 64x48 image"],
     lambda t: ["track", good_loop(t), "--object", "A", "--box", "30,30,70,70", "-o", t / "tr"]),
    ("track-frame-beyond", ["--frame 9", "outside the loop"], lambda t: track(good_loop(t), "--frame", "9")),
    ("track-frame-beyond-frames", ["--frame 2", "outside the loop"],
     lambda t: track(good_loop(t), "--frames", "2", "--frame", "2")),
    ("track-nothing", ["nothing to track"], lambda t: ["track", good_loop(t), "-o", t / "tr"]),
    ("track-two-boxes", ["two boxes"],
     lambda t: ["track", good_loop(t), "--object", "A", "--box", "1,1,9,9", "--box", "2,2,9,9", "-o", t / "tr"]),
    # ---------------------------------------------------------------------------------- evaluation
    ("evaluate-label-other-size", ["different sizes"],
     lambda t: ["evaluate", "--data", _pair(t, corpus.textured(64, 64), _disc_label(32, 32)), "-o", t / "rep"]),
    ("evaluate-label-nan", ["nan"],
     lambda t: ["evaluate", "--data", _pair(t, corpus.textured(), np.where(_disc_label() > 0, np.nan, 0).astype(np.float32),
                                            "a_label.tif"), "-o", t / "rep"]),
    ("evaluate-label-colour", ["colour image cannot be a label map"],
     lambda t: ["evaluate", "--data", _pair(t, corpus.textured(), np.stack([_disc_label()] * 3, -1)), "-o", t / "rep"]),
    ("evaluate-missing-data", ["no such file"], lambda t: ["evaluate", "--data", t / "nowhere", "-o", t / "rep"]),
    ("evaluate-list-without-pairs", ["no 'image,label' lines"],
     lambda t: _existing(t / "list.csv", b"# nothing\n") and ["evaluate", "--data", t / "list.csv", "-o", t / "rep"]),
    ("evaluate-image-truncated", ["truncated"],
     lambda t: corpus.truncated_png(t / "a.png") and corpus.png(t / "a_label.png", _disc_label()) and
     ["evaluate", "--data", f"{t / 'a.png'},{t / 'a_label.png'}", "-o", t / "rep"]),
    ("evaluate-missing-checkpoint", ["checkpoint", "does not exist"],
     lambda t: ["evaluate", "--data", _pair(t, corpus.textured(), _disc_label()), "--model", f"litemedsam={t / 'none.pth'}",
                "-o", t / "rep"]),
    ("evaluate-empty-label", ["no structure"],
     lambda t: ["evaluate", "--data", _pair(t, corpus.textured(), np.zeros((64, 64), np.uint8)), "-o", t / "rep"]),
]


def _checkpoint_cases():
    """Weights files given with --checkpoint: read (torch) but refused before a model is built."""
    import torch

    def seg(t, ckpt):
        return [*segment(good_png(t)), "--checkpoint", ckpt]

    return [
        ("checkpoint-missing", ["does not exist"], lambda t: seg(t, t / "none.pth")),
        ("checkpoint-folder", ["folder"], lambda t: (t / "w.pth").mkdir() or seg(t, t / "w.pth")),
        ("checkpoint-empty", ["empty"], lambda t: _existing(t / "w.pth", b"") and seg(t, t / "w.pth")),
        ("checkpoint-random-bytes", ["not a pytorch checkpoint"],
         lambda t: _existing(t / "w.pth", bytes(range(7, 255)) * 30) and seg(t, t / "w.pth")),
        ("checkpoint-text", ["not a pytorch checkpoint"], lambda t: _existing(t / "w.pth", b"weights\n" * 9) and seg(t, t / "w.pth")),
        ("checkpoint-truncated", ["truncated or corrupt"],
         lambda t: _existing(t / "w.pth", _saved({"a": torch.ones(1000)})[:700]) and seg(t, t / "w.pth")),
        ("checkpoint-pickled-object", ["could run code"],
         lambda t: corpus.checkpoint(t / "w.pth", {"a": corpus.NotTensors()}) and seg(t, t / "w.pth")),
        ("checkpoint-nan-weights", ["nan or infinite", "mask_decoder.iou_token.weight"],
         lambda t: corpus.checkpoint(t / "w.pth", {"mask_decoder.iou_token.weight": torch.full((1, 256), float("nan"))})
         and seg(t, t / "w.pth")),
        ("checkpoint-inf-weights", ["nan or infinite", "image_encoder.x"],
         lambda t: corpus.checkpoint(t / "w.pth", {"image_encoder.x": torch.tensor([1.0, float("inf")])}) and seg(t, t / "w.pth")),
        ("checkpoint-other-architecture", ["does not fit", "architecture"],
         lambda t: corpus.checkpoint(t / "w.pth", {"layer.weight": torch.ones(3, 3)}) and seg(t, t / "w.pth")),
        ("checkpoint-not-a-dict", ["state dict of tensors"],
         lambda t: corpus.checkpoint(t / "w.pth", [torch.ones(2)]) and seg(t, t / "w.pth")),
        ("model-unknown", ["unknown model"], lambda t: [*segment(good_png(t)), "--model", "nosuchmodel"]),
        ("propagate-carrier-unknown", ["unknown model 'nosuchdecoder'"],
         lambda t: propagate(good_volume(t), "--carrier", "nosuchdecoder")),
    ]


def _saved(obj) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


CHECKPOINT_CASES = _checkpoint_cases()


@pytest.mark.parametrize("name, words, build", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_checkpoints_refused_by_name(tmp_path, run_cli, name, words, build):
    argv = build(tmp_path)
    before = snapshot(tmp_path)
    run_cli(*argv).assert_refused(*words)
    assert snapshot(tmp_path) == before


def _npy_declaring(path: Path, shape) -> Path:
    """A .npy whose header declares `shape` (uint8) followed by a few bytes."""
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\0" * 64)
    return path


@pytest.mark.parametrize("name, words, build", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line_and_nothing_changes(tmp_path, run_cli, name, words, build):
    argv = build(tmp_path)
    before = snapshot(tmp_path)
    outcome = run_cli(*argv)
    outcome.assert_refused(*words)
    assert snapshot(tmp_path) == before


def test_picture_over_the_memory_budget_is_refused_before_decoding(tmp_path, run_cli, monkeypatch):
    """Below Pillow's bomb limit, our own budget (SONOSAM_MAX_IMAGE_BYTES) decides from the header."""
    monkeypatch.setenv("SONOSAM_MAX_IMAGE_BYTES", "1M")
    image = corpus.png(tmp_path / "big.png", np.zeros((1000, 1000, 3), np.uint8))
    before = snapshot(tmp_path)
    run_cli(*segment(image)).assert_refused("1 x 1000 x 1000", "memory budget", "SONOSAM_MAX_IMAGE_BYTES")
    assert snapshot(tmp_path) == before
    monkeypatch.setenv("SONOSAM_MAX_IMAGE_BYTES", "lots")
    run_cli(*segment(image)).assert_refused("SONOSAM_MAX_IMAGE_BYTES", "not a size")


def test_there_are_at_least_80_cases():
    names = [c[0] for c in CASES + CHECKPOINT_CASES]
    assert len(names) >= 80 and len(set(names)) == len(names)


def test_legitimate_inputs_are_read_as_they_are(tmp_path):
    """What used to be read wrongly: 16-bit PNG (as 8 bits, hence "constant"), float TIFF; and the rest of the
    gate's accepted formats keep their values and shapes."""
    from PIL import Image

    from sonosam.image import to_uint8_rgb
    from sonosam.io import read_image

    sixteen = read_image(corpus.png16(tmp_path / "16.png"))
    assert sixteen.kind == "2d" and sixteen.array.dtype == np.uint16 and sixteen.array.min() >= 1000
    assert np.array_equal(sixteen.array, np.asarray(Image.open(tmp_path / "16.png"), dtype=np.uint16))
    assert to_uint8_rgb(sixteen.array).std() > 10  # not constant
    floats = read_image(corpus.float_tiff(tmp_path / "f.tif"))
    assert floats.array.dtype == np.float32 and np.allclose(floats.array, corpus.textured().astype(np.float32) / 1000)
    palette = Image.fromarray(_disc_label() * 3).convert("P")
    palette.save(tmp_path / "p.png")
    assert set(np.unique(read_image(tmp_path / "p.png", role="labels").array)) == {0, 3}
    assert read_image(tmp_path / "p.png").vector  # as an image: its colours
    stack = corpus.npy(tmp_path / "s.npy", np.stack([corpus.textured(seed=i) for i in range(3)]))
    assert read_image(stack).kind == "cine" and read_image(stack).n_frames == 3
    loop = read_image(corpus.dicom(tmp_path / "loop.dcm"))
    assert loop.kind == "cine" and loop.array.shape == (4, 48, 64) and loop.cine is not None
    volume = read_image(corpus.nifti(tmp_path / "v.nii.gz", corpus.textured_volume()))
    assert volume.kind == "volume" and volume.geometry is not None and volume.array.shape == (12, 48, 48)


def test_single_frame_ultrasound_keeps_its_millimetre_spacing(tmp_path):
    from pydicom.dataset import Dataset

    from sonosam.io import read_image

    region = Dataset()
    region.RegionSpatialFormat, region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 1, 3, 3
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.05, 0.04  # cm per pixel
    region.RegionLocationMinX0, region.RegionLocationMinY0, region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 0, 0, 63, 47
    path = corpus.dicom(tmp_path / "one.dcm", corpus.textured(48, 64)[None], SequenceOfUltrasoundRegions=[region])
    loaded = read_image(path)
    assert loaded.kind == "2d" and loaded.array.shape == (48, 64)
    assert np.allclose(loaded.geometry.spacing[:2], (0.5, 0.4))  # mm (x, y), as `segment` writes it
