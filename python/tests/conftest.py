"""Shared paths: the repository's fixtures and the installed ``pare`` command."""

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
DATA = FIXTURES / "data"


@pytest.fixture(scope="session")
def cli() -> str:
    """The ``pare`` command the wheel installed beside this interpreter."""
    exe = Path(sys.executable).parent / "pare"
    found = str(exe) if exe.exists() else shutil.which("pare")
    assert found, "the wheel's pare command is not installed"
    return found
