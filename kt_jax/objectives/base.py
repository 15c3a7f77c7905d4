"""The contract between an objective and the one generic trainer.

An objective owns its models; the trainer owns the loop, the optimizer, the mesh, the
checkpoints and the metrics. Trainable parameters are a dict `{model_name: params}` so one
optimizer (or later one per model, for GANs) can address each model by name.
"""
from typing import Any, Protocol

import flax.linen as nn
import jax

PyTree = Any


class Objective(Protocol):
  """What a training stage optimises."""

  def init(self, rng: jax.Array, batch: dict) -> tuple[PyTree, PyTree]:
    """(params, model_state) of the trainable models, e.g. ({'student':..., 'heads':...}, {})."""

  def frozen(self) -> PyTree:
    """Variables of the frozen models (the teacher), placed on the mesh once by the trainer."""

  def loss(self, params: PyTree, model_state: PyTree, frozen: PyTree, batch: dict,
           rng: jax.Array) -> tuple[jax.Array, tuple[dict, PyTree]]:
    """(loss, (metrics, new_model_state)); pure, jit-compiled inside the train step."""

  def feature_model(self, params: PyTree, model_state: PyTree) -> tuple[nn.Module, PyTree]:
    """The (module, variables) whose frozen features evaluators measure (the student)."""

  def teacher_model(self) -> tuple[nn.Module, PyTree] | None:
    """The frozen teacher, evaluated once per run for comparison (or None)."""
