"""Fixtures of the fault regressions: misbehaving upstreams (see `adversarial_peers`), stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from adversarial_peers import RawUpstream, Reply


@pytest.fixture
def raw_upstream() -> Iterator[Callable[[Callable[[dict[str, Any]], Reply]], RawUpstream]]:
    """Start `RawUpstream`s with a script; all are stopped after the test."""
    started: list[RawUpstream] = []

    def start(script: Callable[[dict[str, Any]], Reply]) -> RawUpstream:
        upstream = RawUpstream(script)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.close()
