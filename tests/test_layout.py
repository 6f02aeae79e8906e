"""The code's shape: stage functions take at most six positional parameters, and the core
package imports no stage (the CLI and the `latprune.load_model` facade excepted)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("compress", "profiling", "predictors", "search")


def _functions(folder: str):
    for path in sorted((ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield path, node


def test_stage_functions_take_at_most_six_positional_parameters():
    crowded = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
               for folder in STAGES for path, node in _functions(folder)
               if len([a for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]) > 6]
    assert crowded == []


def test_the_core_imports_no_stage():
    stage_imports = []
    for path in sorted((ROOT / "latprune").glob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if any(name.startswith(f"latprune.{s}") for s in STAGES) and not (
                        path.name == "__init__.py" and name == "latprune.compress.checkpoint"):
                    stage_imports.append(f"{path.name}: {name}")
    assert stage_imports == []
