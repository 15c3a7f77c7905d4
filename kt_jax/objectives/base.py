"""The contract between an objective and the one generic trainer.

An objective owns its models; the trainer owns the loop, the optimizers, the mesh, the
checkpoints and the metrics. Trainable parameters are a dict `{model_name: params}` so an
optimizer can address each model by name.

One optimizer (the default): the objective has `loss`, differentiated with respect to all of
`params`. Several (a GAN's generator and discriminator): the objective also has
`update_groups()`, an ordered `{group_name: UpdateGroup}`; each group owns some models, its
own optimizer (`config.optimizers.<group>` over `config.optimizer`) and its own loss, and the
one compiled train step applies the groups in order, each loss seeing the params and model
state the groups before it left (as a PyTorch loop that steps optimizer 0, then optimizer 1
on a fresh forward pass does).
"""
import dataclasses
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax

PyTree = Any
# (params, model_state, frozen, batch, rng) -> (loss, (metrics, new_model_state))
LossFn = Callable[..., tuple[jax.Array, tuple[dict, PyTree]]]


@dataclasses.dataclass(frozen=True)
class UpdateGroup:
  """Models one optimizer updates, and the loss whose gradient it follows.

  `models` are keys of the objective's params; the loss is differentiated with respect to
  those only (the other models' params enter it as constants). Metric names the loss returns
  must not clash with another group's.
  """
  models: tuple[str, ...]
  loss: LossFn


class Objective(Protocol):
  """What a training stage optimises."""

  def init(self, rng: jax.Array, batch: dict) -> tuple[PyTree, PyTree]:
    """(params, model_state) of the trainable models, e.g. ({'student':..., 'heads':...}, {})."""

  def frozen(self) -> PyTree:
    """Variables of the frozen models (the teacher), placed on the mesh once by the trainer."""

  def loss(self, params: PyTree, model_state: PyTree, frozen: PyTree, batch: dict,
           rng: jax.Array) -> tuple[jax.Array, tuple[dict, PyTree]]:
    """(loss, (metrics, new_model_state)); pure, jit-compiled inside the train step.
    Not used by objectives that define `update_groups`."""

  def feature_model(self, params: PyTree, model_state: PyTree) -> tuple[nn.Module, PyTree]:
    """The (module, variables) whose frozen features evaluators measure (the student)."""

  def teacher_model(self) -> tuple[nn.Module, PyTree] | None:
    """The frozen teacher, evaluated once per run for comparison (or None)."""

  # Optional: def update_groups(self) -> dict[str, UpdateGroup]  (see the module docstring)


def update_groups(objective) -> dict[str, UpdateGroup] | None:
  """The objective's ordered update groups, checked; None for a one-optimizer objective."""
  if not hasattr(objective, "update_groups"):
    return None
  groups = dict(objective.update_groups())
  if not groups:
    raise ValueError(f"{type(objective).__name__}.update_groups() returned no group.")
  seen: dict[str, str] = {}
  for name, group in groups.items():
    for model in group.models:
      if model in seen:
        raise ValueError(f"Model {model!r} is in update groups {seen[model]!r} and {name!r}; "
                         "each model has one optimizer.")
      seen[model] = name
  return groups
