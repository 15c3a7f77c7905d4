"""A two-stage pipeline on shipped data: import the teacher, then distil it with Proteus.

  python -m kt_jax.main --config=configs/pipeline_tiny.py --workdir=workdirs/pipeline_tiny

Each stage writes into its own subfolder (teacher/, proteus/); rerunning skips finished stages
and resumes an interrupted one.
"""
import importlib.util
import os

import ml_collections


def get_config():
  teacher = ml_collections.ConfigDict({"stage": "convert", "src": "efficientnet_lite0"})
  spec = importlib.util.spec_from_file_location(
      "proteus_tiny", os.path.join(os.path.dirname(__file__), "proteus_tiny.py"))
  proteus_tiny = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(proteus_tiny)
  distil = proteus_tiny.get_config()
  distil.teacher.path = "{stage:teacher}"
  c = ml_collections.ConfigDict()
  c.stage = "pipeline"
  c.stages = ml_collections.ConfigDict({"teacher": teacher, "proteus": distil})
  c.order = ("teacher", "proteus")
  return c
