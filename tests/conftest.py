"""Shared pytest setup: slow tests are skipped unless --runslow is given."""
import pytest


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long test, skipped unless --runslow")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow"):
    return
  skip = pytest.mark.skip(reason="slow: pass --runslow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
