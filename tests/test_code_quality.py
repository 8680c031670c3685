"""The code's habits, checked with the tests: ruff's lint and format check, mypy on the package,
and the size rule (no function over 60 lines in jobs/ and model/)."""

from __future__ import annotations

import ast
import subprocess
import sys

from .conftest import REPO

MAX_FUNCTION_LINES = 60


def _run(cmd):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_lint_and_format_are_clean():
    lint = _run([sys.executable, "-m", "ruff", "check", "."])
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run([sys.executable, "-m", "ruff", "format", "--check", "."])
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_finds_no_type_errors():
    proc = _run(["bash", str(REPO / ".ci" / "typecheck")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_function_in_jobs_and_model_is_over_60_lines():
    long = []
    for folder in ("jobs", "model"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)
