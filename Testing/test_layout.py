"""Extension layout: CMake lists every module and every Python file it ships; the core never imports
slicer, qt, ctk or vtk; the Qt-free logic never imports Qt; every Slicer Python file compiles."""

import ast
import py_compile
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["SonoSAMSegment", "SonoSAMTrack"]
GUI_MODULES = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "qSlicerSegmentationsEditorEffectsPythonQt", "PythonQt"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_top_level_cmake_is_an_extension_listing_every_module():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "find_package(Slicer REQUIRED)" in text
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert f"set({key}" in text, key
    for module in MODULES:
        assert f"add_subdirectory({module})" in text
        assert (ROOT / module / "CMakeLists.txt").is_file()
        assert (ROOT / module / f"{module}.py").is_file()
    assert "sonosam/*.py" in text  # the core is installed with the extension


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_lists_its_scripts_and_resources(module):
    text = (ROOT / module / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in text and "slicer_add_python_unittest(" in text
    listed = {item.replace("${MODULE_NAME}", module) for item in re.findall(r"^\s+(\S+\.(?:py|ui|png))\s*$", text, re.M)}
    for item in listed:
        assert (ROOT / module / item).is_file(), f"{module}/CMakeLists.txt lists missing {item}"
    shipped = {p.relative_to(ROOT / module).as_posix() for p in (ROOT / module).rglob("*.py")
               if "Testing" not in p.parts and "__pycache__" not in p.parts}
    missing = shipped - listed
    assert not missing, f"{module}/CMakeLists.txt does not list {sorted(missing)}"


def test_extension_resources():
    from PIL import Image

    with Image.open(ROOT / "Resources" / "SonoSAM.png") as icon:
        assert icon.size == (128, 128)


def test_extension_catalog_entry_is_json():
    """Slicer 5.8+ extension index builds read a .json catalog entry (schema v1.0.2: only these keys,
    $schema, category and scm_url required); the old .s4ext is gone."""
    import json

    assert not list((ROOT / "Resources").glob("*.s4ext"))
    entry = json.loads((ROOT / "Resources" / "SonoSAM.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["scm_type"] in ("git", "local") and 1 <= entry["tier"] <= 5
    text = (ROOT / "CMakeLists.txt").read_text()
    assert entry["category"] in re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', text).group(1)


def test_pyproject_is_installed_next_to_the_core():
    """The Slicer module reads the dependency list from pyproject.toml beside the sonosam package."""
    text = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"install\(FILES pyproject.toml", text)
    assert "configure_file(pyproject.toml" in text


def test_core_never_imports_slicer_qt_or_vtk():
    offenders = {}
    for path in (ROOT / "sonosam").rglob("*.py"):
        bad = _imports(path) & GUI_MODULES
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"the core must stay GUI-free: {offenders}"


def test_qt_free_logic_has_no_qt():
    for path in (ROOT / "SonoSAMSegment" / "SonoSAMSegmentLib").rglob("*.py"):
        assert not _imports(path) & {"qt", "ctk", "PythonQt"}, path


def test_slicer_python_files_compile():
    for module in MODULES:
        for path in (ROOT / module).rglob("*.py"):
            py_compile.compile(str(path), doraise=True)


SLICER_SIDE = ["SonoSAMSegment/SonoSAMSegmentLib/logic.py", "SonoSAMSegment/SonoSAMSegmentLib/geometry.py",
               "SonoSAMSegment/SonoSAMSegmentLib/connection.py", "SonoSAMTrack/SonoSAMTrackLib/logic.py"]


def _python(version: str):
    import glob
    import shutil
    import subprocess

    candidates = [shutil.which(f"python{version}")] + sorted(glob.glob(f"/root/.pyenv/versions/{version}*/bin/python{version}"))
    for candidate in filter(None, candidates):
        try:
            if subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=30).returncode == 0:
                return candidate
        except OSError:
            continue
    return None


@pytest.mark.parametrize("version", ["3.12", "3.9"])
def test_slicer_side_files_and_the_client_compile_under_slicers_python(version):
    """Slicer 5.10 runs Python 3.12; Slicer 5.6/5.8 run 3.9 and still load the modules (to use a remote
    server): every file Slicer imports must compile under both."""
    import subprocess

    python = _python(version)
    if python is None:
        pytest.skip(f"no python{version} on this machine")
    files = [str(p) for module in MODULES for p in (ROOT / module).rglob("*.py")]
    files += [str(ROOT / "sonosam" / name) for name in ("client.py", "wire.py", "errors.py", "prompts.py", "image.py")
              if (ROOT / "sonosam" / name).is_file()]
    code = "import sys\nfor f in sys.argv[1:]:\n    compile(open(f, encoding='utf-8').read(), f, 'exec')"
    result = subprocess.run([python, "-c", code, *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_slicer_side_logic_imports_without_torch():
    """With torch (and cv2) unimportable, the Qt-free logic, the connection and the client import: Slicer's
    process never needs them (the model runs in the server)."""
    import subprocess
    import sys

    pytest.importorskip("slicer", reason="slicer-core is not installed")
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "cv2", "torchvision", "timm"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.path[:0] = [{str(ROOT / 'SonoSAMSegment')!r}, {str(ROOT / 'SonoSAMTrack')!r}, {str(ROOT)!r}]
import SonoSAMSegmentLib.logic, SonoSAMSegmentLib.connection, SonoSAMTrackLib.logic
import importlib.util
if importlib.util.find_spec("sonosam.client"):
    import sonosam.client
print("ok", [m for m in sys.modules if m.split(".")[0] in ("torch", "cv2")])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "ok []"


def test_benchmarks_and_rebuild_scripts_stay_out_of_the_installed_core():
    """CMake installs sonosam/**.py into Slicer and pip installs sonosam*: neither ships benchmarks or the
    scripts that rebuild shipped weights; those live in bench/ and scripts/ at the top level."""
    core = [p.relative_to(ROOT).as_posix() for p in (ROOT / "sonosam").rglob("*.py")]
    assert not [p for p in core if "bench" in Path(p).name or Path(p).stem in ("default_decoder", "distill_colin27")]
    for path in ("bench/models.py", "bench/track.py", "bench/volume.py", "bench/evaluate.py",
                 "scripts/default_decoder.py", "scripts/distill_colin27.py"):
        assert (ROOT / path).is_file(), path



def _core_import_graph() -> dict[str, set[str]]:
    """sonosam module -> the sonosam modules it imports, at any depth of the file (imports inside functions
    count: a lazy import hides a cycle from Python, not from the next reader), except under TYPE_CHECKING."""
    modules = {}
    for path in (ROOT / "sonosam").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)

    def resolve(name: str) -> str | None:
        while name and name not in modules:   # `from x.y import Z` where Z is a class: the module is x.y
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for child in node.body for n in ast.walk(child)}
        edges = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] if base else []
            else:
                continue
            for target in targets:
                found = resolve(target)
                if found and found != name:
                    edges.add(found)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_core_modules_import_each_other_without_cycles():
    """The core is layered (docs/ARCHITECTURE.md): a module never needs, even lazily, one that needs it."""
    graph = _core_import_graph()
    assert "sonosam.prompts" in graph and "sonosam.errors" in graph["sonosam.prompts"]   # the walk sees imports
    cycles = _cycles(graph)
    assert not cycles, "import cycles among the core's modules: " + "; ".join(" -> ".join(c) for c in cycles)
