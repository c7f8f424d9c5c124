"""sonosam.processes: a child that starts a child of its own (as Slicer's PythonSlicer launcher runs the real Python)
is stopped with it; real processes, read back from /proc."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sonosam.processes import own_group, stop_tree

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to see what still runs")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"   # a zombie has ended
    except FileNotFoundError:
        return False


def _launcher(tmp_path, ignore_term: bool, **popen):
    """A parent that runs a sleeping child and passes no signal on; returns (parent, the child's pid)."""
    pid_file = tmp_path / "child.pid"
    child = ("import os, signal, time\n"
             + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
             + f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)")
    launcher = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    parent = subprocess.Popen([sys.executable, "-c", launcher], **popen)
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.time() < deadline and parent.poll() is None
        time.sleep(0.05)
    return parent, int(pid_file.read_text())


@pytest.mark.parametrize("ignore_term", [False, True], ids=["child ends on SIGTERM", "child ignores SIGTERM"])
def test_stop_tree_ends_the_launchers_child(tmp_path, ignore_term):
    parent, child = _launcher(tmp_path, ignore_term, **own_group())
    began = time.perf_counter()
    assert stop_tree(parent, wait=2) is not None
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the launcher's child outlived stop_tree"
    assert time.perf_counter() - began < 8


def test_a_child_without_its_own_group_is_stopped_alone(tmp_path):
    """Not started with own_group(): the test's own group must not be signalled; the child itself still stops."""
    parent, child = _launcher(tmp_path, False)
    try:
        assert stop_tree(parent, wait=2) is not None and parent.poll() is not None
    finally:
        subprocess.run(["kill", "-9", str(child)], check=False)
