"""Child processes that may start children of their own. Slicer's ``PythonSlicer`` is a launcher: it runs the real
Python as its child and passes no signal on, so stopping the launcher alone leaves that Python (pip, a server)
running. A child started with ``own_group()`` is stopped with everything it started by ``stop_tree``: its process
group on POSIX, its process tree on Windows (``taskkill /T``)."""

from __future__ import annotations

import contextlib
import os
import subprocess


def own_group() -> dict:
    """``subprocess.Popen`` keyword arguments giving the child a process group of its own (POSIX; on Windows
    ``taskkill /T`` finds the tree by parent ids)."""
    return {"start_new_session": True} if os.name == "posix" else {}


def stop_tree(process: subprocess.Popen, wait: float = 5) -> int | None:
    """Stop ``process`` and what it started: SIGTERM to its group, up to ``wait`` seconds, then SIGKILL to the group
    for whatever is left (a launcher that ended on the first signal may leave its child); on Windows ``taskkill /T
    /F``. A child that does not lead a group of its own is signalled alone. Returns the exit code (None if it outlived
    both, which only a process the user may not signal does)."""
    if process.poll() is None:
        grouped = _leads_group(process)
        _signal(process, grouped, kill=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
        _signal(process, grouped, kill=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
    return process.poll()


def _leads_group(process: subprocess.Popen) -> bool:
    if os.name != "posix":
        return False
    try:
        return os.getpgid(process.pid) == process.pid
    except ProcessLookupError:
        return False


def _signal(process: subprocess.Popen, grouped: bool, kill: bool) -> None:
    if os.name != "posix":   # the whole tree, by parent ids; /F: taskkill has no polite form for a console child
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        return
    import signal

    with contextlib.suppress(ProcessLookupError):   # gone already
        if grouped:   # the group outlives its leader while any member lives, and its id is not reused till then
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        elif process.poll() is None:
            (process.kill if kill else process.terminate)()
