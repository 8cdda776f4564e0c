"""The shape the architecture promises (docs/architecture.md): packages import only downwards (import-linter's
contracts in pyproject.toml), functions fit on a screen, and a config check does not load the heavy libraries
it does not need."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_python

KDCL = Path(__file__).resolve().parents[2] / "kdcl"
MAX_LINES = 60
WHY = "# long:"  # a function may be longer when a comment with this prefix on its first line says why


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` (import-linter) on the kdcl package under `root`, with root/pyproject.toml's contracts."""
    exe = Path(sys.executable).with_name("lint-imports")
    found = str(exe) if exe.is_file() else shutil.which("lint-imports")
    assert found, "import-linter is not installed: pip install -e '.[dev]'"
    return subprocess.run([found, "--no-cache", "--no-logo"], cwd=root, capture_output=True, text=True, timeout=120)


def test_packages_import_only_downwards():
    checked = lint_imports(KDCL.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert " 0 broken" in checked.stdout


def test_the_contract_refuses_an_upward_import(tmp_path):
    """The check above can fail: the same contracts on a copy of kdcl/ where config imports run (a layer above)."""
    shutil.copytree(KDCL, tmp_path / "kdcl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(KDCL.parent / "pyproject.toml", tmp_path)
    checks = tmp_path / "kdcl" / "config" / "checks.py"
    checks.write_text(checks.read_text() + "\n\ndef planned(cfg):\n    from kdcl.run.plan import build_plan\n\n"
                      "    return build_plan(cfg)\n")  # fmt: skip
    checked = lint_imports(tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "kdcl.config is not allowed to import kdcl.run" in checked.stdout
    assert "kdcl.config.checks -> kdcl.run.plan" in checked.stdout


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
        "import kdcl.cli, kdcl.commands.train, kdcl.run.validate\n"
        "from kdcl.config.compose import compose\n"
        "from kdcl.config.checks import check_values\n"
        "check_values(compose(['curriculum=linear', 'optim=sgd']))\n"
        "print(' '.join(m for m in ('torch', 'pytorch_lightning', 'timm') if m in sys.modules))"
    )
    assert loaded.strip() == ""


def test_a_bad_value_with_a_run_directory_is_refused_before_torch_loads(tmp_path):
    loaded = run_python(
        "import sys\n"
        "from kdcl.commands.train import precheck\n"
        "from kdcl.common.errors import KdclError\n"
        "try:\n"
        f"    precheck(['hydra.run.dir={tmp_path / 'run'}', 'optim.lr=-1'])\n"
        "except KdclError as err:\n"
        "    print('refused:', err)\n"
        "print('loaded:', *[m for m in ('torch', 'pytorch_lightning', 'timm') if m in sys.modules])"
    )
    refused, modules = loaded.strip().splitlines()
    assert refused.startswith("refused: optim.lr=-1") and modules.strip() == "loaded:"
