"""Writes that cannot half-happen: every output goes to a temp file in the target folder and is published
with one rename; a full disk, a read-only folder or a failing writer leaves the old file or nothing, and an
existing file is never replaced unless `overwrite=True` (command line: --overwrite)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from ..errors import DataFileError, SonoSAMError

PathLike = str | os.PathLike


def file_suffix(path: PathLike) -> str:
    name = Path(path).name.lower()
    for compound in (".seg.nrrd", ".seq.nrrd", ".nii.gz"):
        if name.endswith(compound):
            return compound
    return Path(name).suffix


def _exists_error(path: Path) -> DataFileError:
    return DataFileError(f"{path} already exists; pass overwrite=True (command line: --overwrite) to replace it, "
                         f"or choose another output name.")


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _disk_full(folder: Path) -> bool:
    with contextlib.suppress(OSError):   # shutil, not os.statvfs: that one does not exist on Windows
        return shutil.disk_usage(folder).free < 1 << 20
    return False


def write_error(path: Path, error: BaseException) -> DataFileError:
    """One line for a failed write, naming the cause a user can act on (space, permissions) when it is known.
    Writers in C (SimpleITK, nrrd) report a full disk without an errno, hence the free-space look."""
    code = getattr(error, "errno", None)
    if code in _NO_SPACE or _disk_full(path.parent):
        return DataFileError(f"Not enough space to write {path} ({_first_line(error)}); nothing was written. "
                             f"Free some space or write to another folder.")
    if code in _READ_ONLY:
        return DataFileError(f"Cannot write {path}: the folder {path.parent} is read-only or not writable for you; "
                             f"nothing was written. Choose another output folder.")
    return DataFileError(f"Writing {path} failed ({type(error).__name__}: {_first_line(error)}); nothing was written.")


def _writable_ancestor(folder: Path) -> Path:
    """The nearest existing folder at or above `folder` (where a missing output folder would be created)."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _refuse_inputs(path: Path, inputs, fix: str) -> None:
    """Refuse an output that is one of the inputs (the same path, or the same file under another name)."""
    for source in (Path(s) for s in inputs if s is not None):
        if source.resolve() == path.resolve() or (source.exists() and path.exists() and os.path.samefile(source, path)):
            raise DataFileError(f"The output {path} is the input {source}; {fix}.")


def check_output_path(path: PathLike, overwrite: bool, inputs=(), *, parents: bool = False) -> Path:
    """Refuse, before any work, an output that would replace a file (without `overwrite`), replace an input,
    be a folder, or land in a folder that is missing (unless `parents`: then it will be created, and the
    nearest existing folder above must be writable) or read-only."""
    path = Path(path)
    _refuse_inputs(path, inputs, "write the result to another name")
    if path.is_dir():
        raise DataFileError(f"The output {path} is a folder; give a file name inside it.")
    if path.exists() and not overwrite:
        raise _exists_error(path)
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise DataFileError(f"Cannot write {path}: {folder} is a file, not a folder.")
    if not folder.is_dir():
        if not parents:
            raise DataFileError(f"Cannot write {path}: the folder {folder} does not exist.")
        folder = _writable_ancestor(folder)
        if not folder.is_dir():
            raise DataFileError(f"Cannot write {path}: {folder} is a file, not a folder.")
    if not os.access(folder, os.W_OK):
        raise DataFileError(f"Cannot write {path}: the folder {folder} is read-only or not writable for you. "
                            f"Choose another output folder.")
    return path


def check_output_folder(folder: PathLike, names, overwrite: bool, what: str = "earlier results", inputs=()) -> Path:
    """The same checks for a folder of outputs (`names` inside it): it is not a file, none of its outputs is an
    input, its existing outputs are not replaced without `overwrite`, and it (or the folder it will be created in)
    is writable."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataFileError(f"The output folder {folder} is a file; give a folder name.")
    for name in names:
        _refuse_inputs(folder / name, inputs, "give another output folder")
    existing = [name for name in names if (folder / name).exists()]
    if existing and not overwrite:
        raise DataFileError(f"{folder} already holds {what} ({', '.join(existing)}); choose another folder or pass "
                            f"overwrite=True (command line: --overwrite).")
    where = folder if folder.is_dir() else _writable_ancestor(folder)
    if not where.is_dir() or not os.access(where, os.W_OK):
        raise DataFileError(f"Cannot write into {folder}: {where} is read-only or not writable for you. "
                            f"Choose another output folder.")
    return folder


@contextlib.contextmanager
def output_set(paths, folder: PathLike | None = None) -> Iterator[None]:
    """Several outputs of one run: creates `folder` when given and missing; if the block fails, removes the
    outputs it created (those that did not exist before) and the folder it created, so a failed run leaves
    the file system as it found it (replaced files stay replaced: each one was written whole)."""
    paths = [Path(p) for p in paths]
    before = {p for p in paths if p.exists()}
    created: list[Path] = []
    if folder is not None and not Path(folder).exists():
        missing = Path(os.path.abspath(folder))
        while not missing.exists():
            created.append(missing)
            missing = missing.parent
        try:
            Path(folder).mkdir(parents=True)
        except OSError as error:
            raise write_error(Path(folder) / "x", error) from error
    try:
        yield
    except BaseException:
        for p in paths:
            if p not in before:
                with contextlib.suppress(OSError):
                    p.unlink(missing_ok=True)
        for made in created:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()
        raise


def _flush_to_disk(path: Path) -> None:
    """fsync the finished temp file, so that a crash after the rename cannot leave an empty file."""
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_output(path: PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a temp path beside `path` (same extension, so writers pick the same format); publish it with one
    rename when the block succeeds, delete it otherwise. Without `overwrite`, an existing file is an error,
    checked again at publication time (a hard link fails if the name appeared meanwhile)."""
    path = check_output_path(path, overwrite)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{file_suffix(path)}"
    try:
        try:
            yield tmp
        except SonoSAMError:
            raise
        except Exception as error:
            raise write_error(path, error) from error
        if not tmp.exists():
            raise DataFileError(f"Writing {path} produced no file; nothing was written.")
        try:
            _flush_to_disk(tmp)
            if overwrite:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise _exists_error(path) from None
                except OSError as error:  # file systems without hard links: check, then rename
                    if error.errno in _NO_SPACE or error.errno in _READ_ONLY:
                        raise
                    if path.exists():
                        raise _exists_error(path) from None
                    os.replace(tmp, path)
        except OSError as error:
            raise write_error(path, error) from error
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_text(path: PathLike, text: str, *, overwrite: bool = False) -> Path:
    """A text file (JSON, CSV, Markdown) written atomically."""
    with atomic_output(path, overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    return Path(path)


def write_bytes(path: PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    with atomic_output(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)
