"""The tiny Proteus config shrunk further for subprocess tests (seconds, not minutes).

  python -m kt_jax.main --config=tests/tiny_proteus_config.py --workdir=/tmp/tiny
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_trainer import tiny_config  # noqa: E402


def get_config():
  return tiny_config()
