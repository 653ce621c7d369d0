"""Fixtures: real HTTP servers on 127.0.0.1 for endpoint and model-judge graders."""

from collections.abc import Iterator

import pytest

from experiments.demo_servers import DemoServer
from tests.http_test_server import ScriptedServer


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


@pytest.fixture
def demo_server() -> Iterator[DemoServer]:
    with DemoServer(signing_secret="whsec_grade") as server:
        yield server
