"""Static (ast) checks of ``icm_core``'s layering.

* ``icm_core`` is the ComfyUI-independent engine: it never imports ComfyUI modules.
* Library code reports through ``logging``, not ``print`` (only the CLI talks to the terminal).
* Imports of the package itself are relative: ComfyUI imports the node pack under a path-derived name, so
  ``icm_core`` is not importable by that name there.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "icm_core"
PACKAGE = PACKAGE_DIR.name
FORBIDDEN_ROOTS = frozenset({"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "execution"})
# The command line may print: the commands package (cli.py and the per-command modules it dispatches to).
PRINT_ALLOWED = frozenset({"__main__.py", "commands/cli.py", "commands/checks.py", "commands/matte.py", "commands/evaluate.py", "commands/train.py", "scale/command.py"})  # relative to icm_core/
DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})


def _python_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def _module_package(path: Path) -> list[str]:
    """The dotted package a file belongs to, as parts: icm_core/a/b.py -> ['icm_core', 'a']."""
    return [PACKAGE, *path.relative_to(PACKAGE_DIR).parent.parts]


def imports(tree: ast.AST, package: list[str]) -> Iterator[tuple[int, str, int]]:
    """Every import in ``tree`` as ``(line, absolute or raw module name, relative level)``.

    Covers ``import x``, ``from x import y``, relative imports (resolved against ``package``; a relative import
    reaching above the top package is reported as ``'<outside>'``) and ``importlib.import_module("x")`` /
    ``__import__("x")`` with a literal name.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module or "", 0
            elif node.level - 1 >= len(package):
                yield node.lineno, "<outside>", node.level
            else:
                base = package[: len(package) - (node.level - 1)]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])]), node.level
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            first = node.args[0]
            if name in DYNAMIC_IMPORTERS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value, 0


def comfy_imports(tree: ast.AST, package: list[str]) -> list[str]:
    found = []
    for line, module, level in imports(tree, package):
        if level == 0 and module.split(".")[0] in FORBIDDEN_ROOTS:
            found.append(f"line {line}: {module}")
        elif module == "<outside>":
            found.append(f"line {line}: relative import reaching outside {PACKAGE}")
    return found


def absolute_self_imports(tree: ast.AST, package: list[str]) -> list[str]:
    return [
        f"line {line}: {module}"
        for line, module, level in imports(tree, package)
        if level == 0 and module.split(".")[0] == PACKAGE
    ]


def print_uses(tree: ast.AST) -> list[str]:
    """Calls of ``print`` / ``builtins.print`` and bare references to ``print`` (e.g. passed as a callback)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "print" and isinstance(node.ctx, ast.Load):
            found.append(f"line {node.lineno}")
        elif isinstance(node, ast.Attribute) and node.attr == "print" and isinstance(node.value, ast.Name):
            if node.value.id in {"builtins", "__builtins__"}:
                found.append(f"line {node.lineno}")
    return found


def _scan(check) -> dict[str, list[str]]:
    problems = {}
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found = check(path, tree)
        if found:
            problems[str(path.relative_to(PACKAGE_DIR.parent))] = sorted(found, key=lambda f: int(f.split()[1].rstrip(":")))
    return problems


# --------------------------------------------------------------------------- the package


def test_scan_covers_the_package():
    names = {str(p.relative_to(PACKAGE_DIR)) for p in _python_files()}
    assert {"commands/cli.py", "__main__.py", "pipeline.py", "weights/decoder.py", "modeling/key_table.py"} <= names
    for path in _python_files():
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))  # every file is valid Python


def test_no_comfyui_imports():
    problems = _scan(lambda path, tree: comfy_imports(tree, _module_package(path)))
    assert not problems, f"icm_core must not import ComfyUI modules: {problems}"


def test_no_print_outside_cli():
    problems = _scan(
        lambda path, tree: [] if str(path.relative_to(PACKAGE_DIR)) in PRINT_ALLOWED else print_uses(tree)
    )
    assert not problems, f"use logging, not print, in library code: {problems}"


def test_self_imports_are_relative():
    problems = _scan(lambda path, tree: absolute_self_imports(tree, _module_package(path)))
    assert not problems, f"imports of {PACKAGE} inside {PACKAGE} must be relative: {problems}"


# --------------------------------------------------------------------------- the checks themselves


@pytest.mark.parametrize(
    "source",
    [
        "import comfy",
        "import comfy.model_management as mm",
        "from comfy.ldm.modules import attention",
        "from comfy_api.latest import io",
        "import comfy_extras.nodes_mask",
        "import folder_paths",
        "from server import PromptServer",
        "import nodes",
        "from execution import validate",
        "def f():\n    import comfy.utils\n",
        "try:\n    import folder_paths\nexcept ImportError:\n    pass\n",
        "import importlib\nimportlib.import_module('comfy.sd')",
        "__import__('folder_paths')",
        "from ... import nodes",  # from icm_core/weights/x.py: above the top package
    ],
)
def test_comfy_check_catches(source):
    assert comfy_imports(ast.parse(source), [PACKAGE, "weights"])


@pytest.mark.parametrize(
    "source",
    [
        "import comfyui_helpers",
        "from .nodes import thing",  # icm_core.weights.nodes, inside the package
        "from ..server_utils import x",
        "x = 'import comfy'",
        "import executionlib",
    ],
)
def test_comfy_check_allows(source):
    assert not comfy_imports(ast.parse(source), [PACKAGE, "weights"])


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("print('x')", 1),
        ("import sys\nprint('x', file=sys.stderr)", 1),
        ("import builtins\nbuiltins.print('x')", 1),
        ("def run(progress=print):\n    pass", 1),
        ("logger.info('print(x)')", 0),
        ("def pprint():\n    pass\npprint()", 0),
        ("console.print('x')", 0),
    ],
)
def test_print_check(source, expected):
    assert len(print_uses(ast.parse(source))) == expected


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("import icm_core", True),
        ("import icm_core.weights.decoder as d", True),
        ("from icm_core import cli", True),
        ("from icm_core.config import DecoderConfig", True),
        ("if TYPE_CHECKING:\n    from icm_core.types import UNetFeatures", True),
        ("import importlib\nimportlib.import_module('icm_core.tiny')", True),
        ("from . import cli", False),
        ("from ..config import DecoderConfig", False),
        ("import icm_core_extras", False),
    ],
)
def test_self_import_check(source, bad):
    assert bool(absolute_self_imports(ast.parse(source), [PACKAGE, "weights"])) is bad
