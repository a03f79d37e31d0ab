"""Fixtures shared by every suite. Real parts only: real GGUF models, real servers."""

from __future__ import annotations

import pytest

from relayllm.edge.models import smollm2_gguf


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", help="run the long fault and load variants")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_path():
    """SmolLM2-135M-Instruct Q4_1: a real GGUF from PyPI."""
    return smollm2_gguf()
