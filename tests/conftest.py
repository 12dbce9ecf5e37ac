"""Fixtures shared by the whole suite. Keep this file small: logic goes in tests/*.py helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ctid.config import Config
from tests.broker import MosquittoBroker, make_config, running_mosquitto


@pytest.fixture
def ctid_config(tmp_path: Path) -> Config:
    """ctid's configuration for a test: alice and bob, SQLite in ``tmp_path``."""
    return make_config(tmp_path)


@pytest.fixture
async def mosquitto(ctid_config: Config) -> AsyncIterator[MosquittoBroker]:
    """A real Mosquitto running ctid's generated config for ``ctid_config``.

    ``mosquitto.config`` is ``ctid_config`` with the broker's ports and ctid's password.
    """
    async with running_mosquitto(ctid_config) as broker:
        yield broker
