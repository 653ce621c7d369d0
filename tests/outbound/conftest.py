"""Fixtures: real HTTP servers on 127.0.0.1."""

from collections.abc import Iterator

import pytest

from tests.http_test_server import ScriptedServer


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


@pytest.fixture
def second_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()
