"""The layout: layers only point down (import-linter, the contracts in pyproject.toml), the CLI
imports no library before a command runs, and the README's layout table names real folders."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    r = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.count(" KEPT") >= 2 and "BROKEN" not in r.stdout


def test_help_imports_no_heavy_library():
    code = ("import sys; from tck.main import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'tritonclient', 'numpy', 'yaml', 'perf', "
            "'clients', 'build_engines.pipeline', 'build_engines.spec') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_readme_layout_table_names_real_folders():
    """Every folder the table names is in git, except a build output the row says is gitignored,
    which git must then ignore (a fresh clone has no model_repository/ until make engines)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w/.-]+/)` \|(.*)$", table, flags=re.M)
    assert len(rows) >= 12, rows
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
                  .stdout.splitlines())
    in_git = [f for f, _ in rows if any(t.startswith(f) for t in tracked)]
    built = [f for f, what in rows if f not in in_git and "gitignored" in what]
    assert sorted(in_git + built) == sorted(f for f, _ in rows), [f for f, _ in rows if f not in in_git + built]
    for f in built:
        r = subprocess.run(["git", "check-ignore", "-q", f.rstrip("/")], cwd=ROOT)
        assert r.returncode == 0, f"{f}: the README says it is a gitignored build output, git does not ignore it"
