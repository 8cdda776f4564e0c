"""The shape the architecture promises (docs/architecture.md): imports flow one way, functions fit on a
screen, and a config check does not load the heavy libraries it does not need."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

KDCL = Path(__file__).resolve().parents[2] / "kdcl"
MAX_LINES = 60
WHY = "# long:"  # a function may be longer when a comment with this prefix on its first line says why


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_the_curriculum_package_does_not_import_the_pipeline():
    modules = sorted(f"kdcl.curriculum.{p.stem}" for p in (KDCL / "curriculum").glob("*.py") if p.stem != "__init__")
    loaded = run_python(
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(' '.join(m for m in sys.modules if m.startswith('kdcl.run')))"
    )
    assert modules and loaded.strip() == ""


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in KDCL.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_LINES and WHY not in lines[node.lineno - 1]:
                    long.append(f"{path.relative_to(KDCL.parent)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


def test_config_values_are_checked_without_torch_lightning_or_timm():
    loaded = run_python(
        "import sys\n"
        "from kdcl.config.compose import compose\n"
        "from kdcl.config.checks import check_values\n"
        "check_values(compose(['curriculum=linear', 'optim=sgd']))\n"
        "print(' '.join(m for m in ('torch', 'pytorch_lightning', 'timm') if m in sys.modules))"
    )
    assert loaded.strip() == ""
