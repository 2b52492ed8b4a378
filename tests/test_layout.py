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
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    folders = re.findall(r"^\| `([\w/.-]+/)`", table, flags=re.M)
    assert len(folders) >= 12, folders
    assert all((ROOT / f).is_dir() for f in folders), [f for f in folders if not (ROOT / f).is_dir()]
