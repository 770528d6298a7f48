"""Fixtures of the agent tests: a scripted loopback Messages API, the API key, a tiny evidence folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_loopback import API_KEY, LoopbackAPI, build_evidence


@pytest.fixture
def loopback():
    """Start a scripted loopback API: `loopback(script)`; every server is stopped at teardown."""
    servers: list[LoopbackAPI] = []

    def start(script, **kw) -> LoopbackAPI:
        server = LoopbackAPI(script, **kw).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    return API_KEY


@pytest.fixture
def evidence(tmp_path) -> Path:
    return build_evidence(tmp_path / "out", tmp_path / "code")
