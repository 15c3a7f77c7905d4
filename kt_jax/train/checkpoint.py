"""Periodic, keep-N, resumable checkpoints with orbax: train state + data iterator + config.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save resumes from the previous complete step; `latest_step()` never returns a
partial one.
"""
import json
from typing import Any, Sequence

import jax
import orbax.checkpoint as ocp

from kt_jax import paths


class CheckpointDoesNotFitError(ValueError):
  """Resuming a workdir whose checkpoint holds another model's state."""


class Checkpointer:
  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = paths.join(paths.absolute(workdir), "checkpoints")  # gs:// stays a URL
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    # An epath.Path from `paths`, as orbax would make of the string itself (gs:// included).
    self._manager = ocp.CheckpointManager(paths.as_path(self.directory), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: Any, config_json: str) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(json.loads(config_json))), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
    """(state placed with the shardings of `abstract_state`, data iterator state)."""
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointDoesNotFitError(
          f"The checkpoint at step {step} in {self.directory} does not fit this run's model "
          f"(was the config changed?). Use a fresh --workdir, or the config it was written "
          f"with. Details: {str(e)[:500]}") from e
    return restored["state"], restored["data"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def directory_of(workdir: str) -> str:
  return paths.join(paths.absolute(workdir), "checkpoints")  # gs:// stays a URL


def saved_steps(workdir: str) -> list[int]:
  """The steps with a complete (finalised) checkpoint in the workdir, ascending."""
  return sorted(ocp.path.step.checkpoint_steps(paths.as_path(directory_of(workdir))))


def restore_subtrees(workdir: str, step: int, subtrees: Sequence[Sequence[str]]) -> dict:
  """Only the train-state subtrees at `subtrees` (e.g. ("params", "student")) of one step's
  checkpoint, on this host's first device: no optimizer state is read, and the shardings the
  run used (any mesh, any process count) do not matter."""
  path = paths.as_path(paths.join(directory_of(workdir), str(step), "state"))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.PyTreeCheckpointer() as ckpt:
    meta = ckpt.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    wanted: dict = {}
    for keys in subtrees:
      source, target = meta, wanted
      for i, key in enumerate(keys):
        try:
          source = source[key]
        except (KeyError, TypeError, IndexError):
          raise KeyError(f"The checkpoint at step {step} has no {'/'.join(keys[:i + 1])}.")
        target = target.setdefault(key, {}) if i < len(keys) - 1 else target
      target[keys[-1]] = source
    item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), wanted)
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), wanted)
    return ckpt.restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))


def abstract_like(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
