import os
from pathlib import Path

import pytest

os.environ.setdefault("PAPERBOOK_PROGRESS", "0")
for var in ("PAPERBOOK_RUN_DIR", "PAPERBOOK_RUNS"):  # tests decide where runs are written
    os.environ.pop(var, None)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def root() -> Path:
    return ROOT
