from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto of this test's own on a free port, stopped at the end."""
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def quiet_pymodbus() -> Iterator[None]:
    """pymodbus logs every unanswered or refused request at error level; in the tests that provoke
    them (``pytestmark = pytest.mark.usefixtures("quiet_pymodbus")``) that is the point."""
    logger = logging.getLogger("pymodbus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
