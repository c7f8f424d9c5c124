"""Device and backend choices, checked before any work: the spelling without importing torch (the command
line does it at parse time), what this machine has once torch is imported (before a model is loaded)."""

from __future__ import annotations

import os
import re

from .errors import DeviceError

BACKENDS = ("auto", "eager", "onnx", "onnx-decoder", "eager-fp16", "eager-bf16")
_DEVICE = re.compile(r"(cpu|cuda|mps)(:\d+)?")


def check_device_name(text: str) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'mps' (lower-cased); anything else is refused by name."""
    name = str(text).strip().lower()
    if not _DEVICE.fullmatch(name) or (name.startswith(("cpu:", "mps:")) and not name.endswith(":0")):
        raise DeviceError(f"Device {text!r} is not one SonoSAM knows; use cpu, cuda, cuda:N or mps.")
    return name


def check_backend_name(text: str | None) -> str:
    name = (text or "auto").strip().lower()
    if name not in BACKENDS:
        raise DeviceError(f"Unknown backend {text!r}; choose one of {', '.join(BACKENDS)}.")
    return name


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(preference=None):
    """The torch.device asked for ($SONOSAM_DEVICE when None), after checking this machine has it; None and
    no variable: the fastest present (CUDA, then MPS, then CPU)."""
    import torch

    if isinstance(preference, torch.device):
        preference = str(preference)
    preference = preference or os.environ.get("SONOSAM_DEVICE")
    if not preference:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    name = check_device_name(preference)
    kind, _, index = name.partition(":")
    here = ", ".join(available_devices())
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"Device {preference!r} asked for, but {why} (torch {torch.__version__}); "
                              f"available here: {here}.")
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceError(f"Device {preference!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                              f"available here: {here}.")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise DeviceError(f"Device {preference!r} asked for, but Apple MPS is not available here; available here: {here}.")
    return torch.device(name)
