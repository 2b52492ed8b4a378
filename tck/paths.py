"""Default paths of the command line (overridable by environment variables)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPO = Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository"))
DEFAULT_BUILD = Path(os.environ.get("BUILD_DIR", ROOT / "build"))
RESULTS_DIR = Path(os.environ.get("RESULTS_DIR", ROOT / "results"))
WORK_DIR = RESULTS_DIR / "work"     # inputs written for the load tools
