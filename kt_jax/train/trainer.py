"""The one generic training loop. An objective supplies models and a pure loss; this file
supplies the mesh, the compiled and donated train step, the optimizer (one per update group
for objectives that train several models against each other, e.g. a GAN: all updated in the
one step; see `kt_jax.objectives.base`), checkpoints, resume, metrics and evaluation, and
knows nothing method-specific.
"""
import dataclasses
import json
import signal
import threading
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from kt_jax import paths, sharding
from kt_jax.objectives.base import Objective, update_groups as objective_update_groups
from kt_jax.train import checkpoint, metrics as metrics_lib, model_out
from kt_jax.train import optimizer as optimizer_lib
from kt_jax.train.state import TrainState


class StopSignal:
  """SIGTERM/SIGINT (preemption, Ctrl-C) ask the loop to checkpoint and return, not die."""

  def __init__(self):
    self.received, self._previous = None, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class NonFiniteLossError(RuntimeError):
  """Training produced NaN/Inf; the last good checkpoint on disk is left untouched."""


@dataclasses.dataclass
class Schedule:
  total_steps: int
  warmup_steps: int
  steps_per_epoch: int = 0   # for a group optimizer's own `warmup_epochs`


def _warmup(opt_cfg, steps_per_epoch: int) -> int:
  return opt_cfg.get("warmup_steps", 0) or int(
      opt_cfg.get("warmup_epochs", 0) * steps_per_epoch)


def resolve_schedule(config, steps_per_epoch: int) -> Schedule:
  """Steps from `total_steps`, or from `epochs` x steps per epoch (likewise for warmup)."""
  total = config.get("total_steps", 0) or int(config.get("epochs", 0) * steps_per_epoch)
  if total <= 0:
    raise ValueError("Set config.total_steps or config.epochs to a positive number.")
  return Schedule(total, _warmup(config.optimizer, steps_per_epoch), steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class GroupOptimizer:
  """One optimizer of the train step: what it updates, after which loss, with which schedule.

  `name` None is the one optimizer of an objective without update groups: it updates all
  params after `objective.loss`, its state is the train state's `opt_state` itself and its
  metrics carry no prefix (the layout every one-optimizer run has always had).
  """
  name: str | None
  models: tuple[str, ...] | None   # None: every model
  loss: Callable
  tx: optax.GradientTransformation
  schedule: optax.Schedule

  def select(self, params):
    return params if self.models is None else {m: params[m] for m in self.models}


def make_group_optimizers(config, objective: Objective, abstract_params,
                          sched: Schedule) -> list[GroupOptimizer]:
  """The objective's update groups (or its one loss), each with its optimizer from
  `optimizer.group_config`; a trainable model no group updates is an error."""
  groups = objective_update_groups(objective)
  if groups is None:
    tx, schedule = optimizer_lib.make_optimizer(config.optimizer, abstract_params,
                                                sched.total_steps, sched.warmup_steps,
                                                config.batch_size)
    return [GroupOptimizer(None, None, objective.loss, tx, schedule)]
  orphans = sorted(set(abstract_params) - {m for g in groups.values() for m in g.models})
  if orphans:
    raise ValueError(f"Trainable models {orphans} are in no update group of "
                     f"{type(objective).__name__}; nothing would update them.")
  out = []
  for name, group in groups.items():
    opt_cfg = optimizer_lib.group_config(config, name)
    overridden = set(config.get("optimizers", {}).get(name, {}) or {})
    warmup = (_warmup(opt_cfg, sched.steps_per_epoch)
              if overridden & {"warmup_steps", "warmup_epochs"} else sched.warmup_steps)
    sub = {m: abstract_params[m] for m in group.models}
    tx, schedule = optimizer_lib.make_optimizer(opt_cfg, sub, sched.total_steps, warmup,
                                                config.batch_size)
    out.append(GroupOptimizer(name, tuple(group.models), group.loss, tx, schedule))
  return out


def init_opt_state(groups: list[GroupOptimizer], params):
  if groups[0].name is None:
    return groups[0].tx.init(params)
  return {g.name: g.tx.init(g.select(params)) for g in groups}


def make_train_step(objective: Objective, groups: list[GroupOptimizer],
                    ema_decay: float) -> Callable:
  """The step: each group in order takes the gradient of its loss with respect to its models
  and applies its optimizer; the next group sees the params and model state it left."""
  single = groups[0].name is None

  def train_step(state: TrainState, batch, frozen):
    params, model_state, key = state.params, state.model_state, state.key()
    opt_states = {None: state.opt_state} if single else dict(state.opt_state)
    step_metrics, first_loss = {}, None
    for index, group in enumerate(groups):
      rng = key if single else jax.random.fold_in(key, index)
      def loss_fn(trained, params=params, model_state=model_state, group=group, rng=rng):
        return group.loss({**params, **trained}, model_state, frozen, batch, rng)
      trained = group.select(params)
      (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
      updates, opt_states[group.name] = group.tx.update(grads, opt_states[group.name], trained)
      params = {**params, **optax.apply_updates(trained, updates)}
      prefix = "" if single else f"{group.name}/"
      step_metrics.update(metrics)
      step_metrics.update({prefix + "loss": loss, prefix + "lr": group.schedule(state.step),
                           prefix + "grad_norm": optimizer_lib.global_norm(grads),
                           prefix + "update_norm": optimizer_lib.global_norm(updates)})
      first_loss = loss if first_loss is None else first_loss
    # `loss` (the progress bar, benchmarks): the first group's, e.g. the generator's.
    step_metrics.update(loss=first_loss, param_norm=optimizer_lib.global_norm(params))
    ema = (optimizer_lib.ema_update(state.ema_params, params, ema_decay)
           if state.ema_params is not None else None)
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_states[None] if single else opt_states,
                              ema_params=ema)
    return new_state, step_metrics
  return train_step


def first_non_finite(rows: list[tuple[int, dict]]) -> tuple[int, str] | None:
  for step, row in rows:
    for name, value in row.items():
      if not np.all(np.isfinite(value)):
        return step, name
  return None


@dataclasses.dataclass
class Setup:
  """Everything compiled and placed for one training run; what `kt_jax.bench` times too."""
  mesh: Any
  init: Callable            # key -> TrainState, created in place with its shardings
  step_fn: Callable         # (state, global batch, frozen) -> (state, metrics); donates state
  abstract_state: Any
  state_shardings: Any
  batch_sharding: Any
  frozen: Any               # the teacher's variables, placed once
  ema_decay: float


def build(config, objective: Objective, sample: dict, sched: Schedule) -> Setup:
  """Shapes first (no FLOPs), then shardings, then jits that create the state in place."""
  mesh = sharding.make_mesh(config.mesh.to_dict())
  rules = [tuple(r) for r in config.get("sharding_rules", ())]
  rng = jax.random.key(config.seed)
  abstract_params, _ = jax.eval_shape(objective.init, rng, sample)
  groups = make_group_optimizers(config, objective, abstract_params, sched)
  ema_decay = config.get("ema_decay", 0.0)

  def init_state(key):
    init_key, run_key = jax.random.split(key)
    params, model_state = objective.init(init_key, sample)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=init_opt_state(groups, params), ema_params=params if ema_decay else None,
                      rng=jax.random.key_data(run_key))

  abstract_state = jax.eval_shape(init_state, rng)
  state_shardings = sharding.tree_shardings(abstract_state, mesh, rules)
  frozen = objective.frozen()
  frozen_shardings = sharding.tree_shardings(frozen, mesh, rules)
  frozen = jax.device_put(frozen, frozen_shardings)
  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = jax.jit(make_train_step(objective, groups, ema_decay),
                    in_shardings=(state_shardings, batch_sharding, frozen_shardings),
                    out_shardings=(state_shardings, sharding.replicated(mesh)),
                    donate_argnums=(0,))
  return Setup(mesh, jax.jit(init_state, out_shardings=state_shardings), step_fn,
               abstract_state, state_shardings, batch_sharding, frozen, ema_decay)


COST_FILE = "train_cost.json"


def step_cost(compiled, global_batch_size: int) -> dict:
  """FLOPs of one compiled train step from XLA's cost analysis (forward, backward, optimizer
  and any frozen teacher), per step and per image: what a stage's compute is counted in."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  return {"flops_per_step": flops, "batch_size": int(global_batch_size),
          "flops_per_image": flops / global_batch_size}


def train(config, workdir: str, objective: Objective, loader, steps_per_epoch: int,
          evaluate: Callable[[int, TrainState], dict] | None = None,
          init_params_hook: Callable[[Any], Any] | None = None,
          init_model_state_hook: Callable[[Any], Any] | None = None,
          started_from: str = "") -> dict:
  """Runs (or resumes) training to the end; returns the last logged metrics.

  `loader` yields this process's share of each global batch (dicts of NumPy arrays) and has
  `get_state()`/`set_state()`; `evaluate(step, state)` returns a dict of numbers;
  `init_params_hook(params)` may replace freshly initialised params (weight inheritance),
  `init_model_state_hook(model_state)` the fresh model state (pretrained BatchNorm
  statistics). The step's FLOPs (XLA's cost analysis) go to `<workdir>/train_cost.json`,
  with `started_from`, the model the hooks loaded (its own compute counts as this run's
  pretraining too: `kt_jax.eval.report.stage_compute`).
  """
  sched = resolve_schedule(config, steps_per_epoch)
  iterator: Iterator = iter(loader)
  first_batch = next(iterator)  # shapes for init; restored below so no sample is lost
  setup = build(config, objective, jax.tree.map(lambda x: x[:1], first_batch), sched)
  mesh, frozen, step_fn = setup.mesh, setup.frozen, setup.step_fn
  state_shardings, ema_decay = setup.state_shardings, setup.ema_decay
  logging.info("Mesh %s, %d steps (%d warmup), global batch %d", dict(mesh.shape),
               sched.total_steps, sched.warmup_steps, config.batch_size)

  # Resume order: (1) the latest complete checkpoint in this workdir, with its data iterator
  # position; (2) otherwise a fresh state from the seed and the iterator from its start.
  ckpt = checkpoint.Checkpointer(workdir, keep=config.get("keep_checkpoints", 3),
                                 async_save=config.get("async_checkpoints", True))
  is_main = jax.process_index() == 0
  if is_main:  # which leaves of a checkpoint make the student: for `convert extract`
    model_out.write_layout(workdir, config, objective, setup.abstract_state)
  start_step = ckpt.latest_step() or 0
  if start_step:
    state, data_state = ckpt.restore(start_step, checkpoint.abstract_like(
        setup.abstract_state, state_shardings))
    loader.set_state(data_state)
    iterator = iter(loader)
    logging.info("Resumed from step %d in %s", start_step, ckpt.directory)
  else:
    state = setup.init(jax.random.key(config.seed))
    if init_params_hook is not None:
      params = jax.device_put(init_params_hook(state.params), state_shardings.params)
      state = state.replace(params=params, ema_params=params if ema_decay else None)
    if init_model_state_hook is not None:
      state = state.replace(model_state=jax.device_put(
          init_model_state_hook(state.model_state), state_shardings.model_state))
    iterator = _prepend(first_batch, iterator)
  # Compiled once here (not on the first call) so its cost analysis is at hand.
  step_fn = step_fn.lower(state, sharding.global_batch(first_batch, mesh), frozen).compile()
  if is_main:
    cost = step_cost(step_fn, config.batch_size)
    if started_from:
      cost["started_from"] = started_from
    paths.write_text(paths.join(workdir, COST_FILE), json.dumps(cost, indent=2))
  writer = metrics_lib.MetricWriter(workdir, sched.total_steps, start_step, config.batch_size,
                                    enabled=is_main)
  writer.truncate_after(start_step)
  config_json = config.to_json_best_effort()

  pending: list[tuple[int, Any]] = []
  last: dict = {}
  step = start_step
  stop_signal = StopSignal()
  try:
    stop_signal.__enter__()
    for step in range(start_step + 1, sched.total_steps + 1):
      local_batch = next(iterator)
      if config.get("log_sample_ids") and "id" in local_batch:
        writer.write_ids(step, local_batch["id"])
      batch = sharding.global_batch(local_batch, mesh)
      state, step_metrics = step_fn(state, batch, frozen)
      pending.append((step, step_metrics))
      is_last = step == sched.total_steps
      # `stop_after_steps`: end this invocation early (with a checkpoint), e.g. to fit a
      # job's time limit; the same command then resumes where it stopped.
      stop_now = (step == start_step + config.get("stop_after_steps", 0)
                  or stop_signal.received is not None)
      save_now = step % config.checkpoint_every_steps == 0 or is_last or stop_now
      if step % config.log_every_steps == 0 or save_now:
        host = [(s, jax.device_get(m)) for s, m in pending]
        pending.clear()
        bad = first_non_finite(host)
        if bad:
          raise NonFiniteLossError(
              f"Non-finite {bad[1]} at step {bad[0]}; stopping. The last good checkpoint "
              f"(step {ckpt.latest_step()}) in {ckpt.directory} is kept.")
        last = {k: float(v) for k, v in host[-1][1].items()}
        if hasattr(loader, "bad_records"):  # undecodable images skipped so far
          last["bad_records"] = float(loader.bad_records())
        writer.write(step, last)
      if save_now:
        ckpt.save(step, state, loader.get_state(), config_json)
      every = config.get("eval_every_steps", 0)
      if evaluate and (is_last or (every and step % every == 0)):
        writer.write_eval(step, evaluate(step, state))
      if stop_now and not is_last:
        logging.warning("Stopping at step %d (%s) with a checkpoint; rerun the same command to "
                        "resume.", step, stop_signal.received or "stop_after_steps")
        break
  finally:
    stop_signal.__exit__()
    ckpt.close()
    writer.close()
  if is_main and paths.exists(writer.path):
    metrics_lib.plot_loss_curves(workdir)
  last["completed"] = float(step == sched.total_steps)
  if last["completed"]:  # the product: <workdir>/model/ (and model_ema/)
    model_out.save_trained(workdir, config, objective, state)
  return last


def _prepend(first, rest):
  yield first
  yield from rest
