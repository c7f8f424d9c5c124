"""Helpers for the hostile-input suite: run a command, look at the file system before and after, and real
full / read-only file systems (a small tmpfs, mounted when this process may; see `full_disk`)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
from pathlib import Path

import pytest


def snapshot(root: Path) -> dict:
    """Every file and folder under `root` (hidden temp files included) with size and content digest."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            state[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digest = hashlib.sha1(handle.read()).hexdigest()
            state[os.path.relpath(path, root)] = (os.path.getsize(path), digest)
    return state


class Outcome:
    def __init__(self, code, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def message(self) -> str:
        return self.err.strip()

    def assert_refused(self, *words: str, code: int = 2) -> None:
        """Exit status, exactly one line on stderr that names the problem (all `words`), no traceback."""
        assert self.code == code, f"exit {self.code} (wanted {code}); stderr: {self.err!r}"
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, f"wanted one line, got {len(lines)}: {self.err!r}"
        assert "Traceback" not in self.err
        for word in words:
            assert word.lower() in self.message.lower(), f"{word!r} not in {self.message!r}"


@pytest.fixture
def run_cli(capsys):
    """Run `sonosam ARGS...` in this process (the console script's own `main`); an exception escaping it
    fails the test, which is the no-traceback check."""
    from sonosam.cli import main

    def run(*argv) -> Outcome:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as stop:  # argparse's own exit
            code = stop.code
        out, err = capsys.readouterr()
        return Outcome(code, out, err)

    return run


def _mount_tmpfs(where: Path, size: str = "64k", read_only: bool = False) -> bool:
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=20)


def _fill(folder: Path) -> None:
    with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 4096)


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a really full file system: a 64 KiB tmpfs filled to the last block (needs the right to
    mount: root here and in CI). Where mounting is not allowed, the test is skipped here and the
    RLIMIT_FSIZE test (test_full_disk_by_file_size_limit) covers the same code path."""
    where = tmp_path / "full"
    where.mkdir()
    if not _mount_tmpfs(where):
        where.rmdir()
        pytest.skip("cannot mount a tmpfs here (not root or no CAP_SYS_ADMIN)")
    try:
        _fill(where)
        probe = where / "probe"
        try:
            probe.write_bytes(b"x" * 8192)
            pytest.skip("the tmpfs did not fill up")
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            probe.unlink(missing_ok=True)
        yield where
    finally:
        _umount(where)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only file system (a tmpfs mounted ro; as root, chmod alone does not stop writes)."""
    where = tmp_path / "readonly"
    where.mkdir()
    if not _mount_tmpfs(where, read_only=True):
        if os.geteuid() == 0:
            where.rmdir()
            pytest.skip("cannot mount a read-only tmpfs here, and as root chmod does not stop writes")
        where.chmod(0o555)
        yield where
        where.chmod(0o755)
        return
    try:
        yield where
    finally:
        _umount(where)
