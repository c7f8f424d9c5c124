"""Checkpoint files: where they live, how they are downloaded and verified, and how they are loaded
without executing anything (weights_only pickles, checksums, clear errors)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError, WeightsNotAvailableError


def cache_dir() -> Path:
    """Folder for downloaded weights: $SONOSAM_HOME/weights, else ~/.cache/sonosam/weights."""
    root = os.environ.get("SONOSAM_HOME") or Path.home() / ".cache" / "sonosam"
    return Path(root) / "weights"


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mismatch(path: str | Path, expected: str | None) -> str | None:
    """"algorithm is ACTUAL, expected EXPECTED" when the file does not match "algorithm:hexdigest", else None."""
    if not expected:
        return None
    algorithm, _, hexdigest = expected.partition(":")
    actual = file_digest(path, algorithm)
    return f"{algorithm} is {actual}, expected {hexdigest}" if actual != hexdigest.lower() else None


def verify(path: str | Path, expected: str | None) -> None:
    """Check a file against "algorithm:hexdigest" (sha256 or md5); no expectation -> nothing to check."""
    mismatch = _mismatch(path, expected)
    if mismatch:
        raise CheckpointError(f"Checksum mismatch for {path}: {mismatch}. The file is corrupt, truncated or a "
                              "different release; delete it and download it again.")


def _verified_record(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path, expected: str) -> str:
    stat = path.stat()
    return json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "digest": expected.lower()})


def verify_cached(path: Path, expected: str | None) -> None:
    """A file in the weights cache checked against its official checksum once, and again whenever it changes
    (size or time), so weights put there by hand are checked too without hashing gigabytes on every load."""
    if not expected:
        return
    record = _verified_record(path)
    try:
        if record.read_text() == _stamp(path, expected):
            return
    except OSError:
        pass
    mismatch = _mismatch(path, expected)
    if mismatch:
        raise CheckpointError(f"{path} is not the official file of this model ({mismatch}): corrupt, truncated or "
                              "other weights. Delete it and download it again, or pass other weights of this "
                              "architecture as checkpoint=PATH (--checkpoint PATH).")
    _remember_verified(path, expected)


def _remember_verified(path: Path, expected: str | None) -> None:
    if not expected:
        return
    try:
        _verified_record(path).write_text(_stamp(path, expected))
    except OSError:
        pass   # a read-only cache: verified again on the next load


def download(url: str, destination: Path, expected: str | None, progress: bool = True) -> Path:
    """Download to a temporary file beside `destination`, verify, then move into place atomically."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=destination.name, suffix=".part", dir=destination.parent)
    except OSError as error:   # e.g. SONOSAM_HOME on a read-only path
        from ..io.atomic import write_error

        raise write_error(destination, error) from None
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            bar = _progress_bar(total, destination.name) if progress else None
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        mismatch = _mismatch(temp, expected)
        if mismatch:
            raise CheckpointError(f"The download of {url} does not match its checksum ({mismatch}); nothing was "
                                  "kept. Try again; if it persists, the file at that address has changed.")
        temp.replace(destination)
        _remember_verified(destination, expected)
    except OSError as error:
        from ..io.atomic import _NO_SPACE, _READ_ONLY, write_error

        if not isinstance(error, urllib.error.URLError) and getattr(error, "errno", None) in _NO_SPACE | _READ_ONLY:
            raise write_error(destination, error) from None   # a full disk or a read-only folder, not the network
        raise WeightsNotAvailableError(
            f"Could not download {url} ({getattr(error, 'reason', error)}). Without network, download the file "
            f"on another machine and put it at {destination}, or pass the checkpoint path explicitly.") from error
    finally:
        temp.unlink(missing_ok=True)
    return destination


def _progress_bar(total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total or None, unit="B", unit_scale=True, desc=f"Downloading {name}", file=sys.stderr)


def _looks_like_checkpoint(path: Path) -> bool:
    """torch.save writes a zip archive (PyTorch >= 1.6) or, legacy, a pickle (protocol 2+ starts with 0x80)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def check_finite(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights holding NaN or infinity, naming the tensors (they give empty masks and IoU nan)."""
    bad = [name for name, tensor in state.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(f"{path} has NaN or infinite values in {', '.join(bad[:3])}{more}; these weights are "
                              f"broken (a diverged training run?). Use an earlier checkpoint.")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors only: a pickle that would run code is refused, not executed; a file that is
    not a checkpoint at all is called that; tensors with NaN/Inf are refused by name."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotAvailableError(f"Checkpoint {path} does not exist" + (" (it is a folder)." if path.is_dir() else "."))
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes); the download or save did not finish.")
    if not _looks_like_checkpoint(path):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle); "
                              f"give the .pth/.pt file of the model's weights.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower() and "weights_only" not in str(error).lower():
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({path.stat().st_size} bytes; "
                                  f"{str(error).strip().splitlines()[0]}); it is corrupt or another kind of file.") from error
        raise CheckpointError(
            f"{path} holds Python objects besides tensors, so it could run code when loaded; refusing it. "
            "Save a plain state dict (torch.save(model.state_dict(), path)).") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({path.stat().st_size} bytes; {first}). "
            "It is probably truncated or corrupt: download it again.") from error
    for key in ("model", "state_dict"):  # training checkpoints wrap the weights
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{path} does not contain a state dict of tensors.")
    check_finite(checkpoint, path)
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, architecture: str) -> None:
    """Strictly load `state`; a mismatch names the file, the architecture and the first differences."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        def some(items):
            return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
        details = "; ".join(part for part in (
            missing and f"{len(missing)} missing keys: {some(missing)}",
            unexpected and f"{len(unexpected)} unexpected keys: {some(unexpected)}",
            wrong_shape and f"{len(wrong_shape)} shape mismatches: {some(wrong_shape)}") if part)
        raise CheckpointError(f"{path} does not fit the {architecture} architecture: {details}. "
                              "Choose the model that matches this checkpoint.")
    module.load_state_dict(state, strict=True)
