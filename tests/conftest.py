import os
from pathlib import Path

import pytest

os.environ.setdefault("PAPERBOOK_PROGRESS", "0")
for var in ("PAPERBOOK_RUN_DIR", "PAPERBOOK_RUNS"):  # tests decide where runs are written
    os.environ.pop(var, None)

ROOT = Path(__file__).resolve().parents[1]
os.environ["PAPERBOOK_OFFLINE"] = "1"  # the data registry never downloads during tests
if not os.environ.get("PAPERBOOK_DATA") and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["PAPERBOOK_DATA"] = str(ROOT.parent / "shared" / "data")  # this repository's real data


@pytest.fixture
def root() -> Path:
    return ROOT
