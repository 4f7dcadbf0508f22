"""Shared fixtures: `masters` starts real `hotswap start` processes and reaps them all."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Daemons, MasterFactory  # noqa: E402


@pytest.fixture
def masters(tmp_path: Path) -> Iterator[MasterFactory]:
    factory = MasterFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(tmp_path)
    try:
        yield d
    finally:
        d.close()
