"""The one trainer with several optimizers (update groups), on a toy two-player objective:
the compiled step equals a hand-written optax loop, every optimizer state is checkpointed,
a stopped run resumes bit-identically, and a one-optimizer objective keeps its state layout."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from kt_jax import config_defaults
from kt_jax.objectives.base import UpdateGroup
from kt_jax.train import trainer

BATCH = 4


class Toy(nn.Module):
  """Player a as a module, so the trainer can save it as `model/`."""

  @nn.compact
  def __call__(self, x):
    return x @ self.param("w", nn.initializers.normal(1.0), (2, 2))


def loss_a(params, model_state, frozen, batch, rng):
  """Player a fits x @ w to b's first two entries (plus a little rng noise)."""
  pred = batch["x"] @ params["a"]["w"]
  loss = jnp.mean((pred - params["b"]["v"][:2]) ** 2) + 0.01 * jax.random.normal(rng, ())
  return loss, ({"a_loss": loss}, {"count": model_state["count"] + 1})


def loss_b(params, model_state, frozen, batch, rng):
  """Player b chases a's latest mean prediction, shifted by a frozen target."""
  pull = jnp.mean(batch["x"] @ params["a"]["w"])
  loss = jnp.mean((params["b"]["v"] - frozen["target"] - pull) ** 2)
  loss = loss + 0.01 * jax.random.normal(rng, ())
  return loss, ({"b_loss": loss, "count_seen": model_state["count"]},
                {"count": model_state["count"] + 10})


@dataclasses.dataclass
class TwoPlayers:
  def init(self, rng, batch):
    ka, kb = jax.random.split(rng)
    return ({"a": Toy().init(ka, batch["x"][:1])["params"],
             "b": {"v": jax.random.normal(kb, (3,))}}, {"count": jnp.zeros((), jnp.float32)})

  def frozen(self):
    return {"target": jnp.asarray([0.5, -1.0, 2.0])}

  def update_groups(self):
    return {"first": UpdateGroup(("a",), loss_a), "second": UpdateGroup(("b",), loss_b)}

  def feature_model(self, params, model_state):
    return Toy(), {"params": params["a"]}

  def teacher_model(self):
    return None


class ArrayLoader:
  """Batches of a fixed array in order, with an iterator position that checkpoints."""

  def __init__(self, data):
    self.data, self.position = data, 0

  def __iter__(self):
    while True:
      start = self.position * BATCH % len(self.data)
      self.position += 1
      yield {"x": self.data[start:start + BATCH]}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = state["position"]


DATA = np.random.RandomState(0).randn(6 * BATCH, 2).astype(np.float32)


def toy_config(**overrides):
  c = config_defaults.training_config()
  c.stage = "toy"
  c.batch_size, c.total_steps = BATCH, 3
  c.log_every_steps = c.checkpoint_every_steps = 1
  c.async_checkpoints = False
  c.optimizer.update(lr=0.1, min_lr=0.1, lr_base_batch=0, weight_decay=0.2, b1=0.8)
  # The second player: its own lr and Adam eps; everything else from config.optimizer.
  c.optimizers = ml_collections.ConfigDict({"second": {"lr": 0.03, "min_lr": 0.03,
                                                       "eps": 1e-3}})
  c.update(overrides)
  return c


def read_state(workdir, step):
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def reference(steps, seed=0):
  """The same two optimizers and losses in a plain optax loop, written out by hand."""
  objective = TwoPlayers()
  init_key, run_key = jax.random.split(jax.random.key(seed))
  params, model_state = objective.init(init_key, {"x": DATA[:1]})
  # AdamW as config.optimizer says (constant lr: min_lr = lr); decay on matrices only.
  tx_a = optax.adamw(0.1, b1=0.8, b2=0.999, eps=1e-8, weight_decay=0.2,
                     mask={"a": {"w": True}})
  tx_b = optax.adamw(0.03, b1=0.8, b2=0.999, eps=1e-3, weight_decay=0.2,
                     mask={"b": {"v": False}})
  opt_a, opt_b = tx_a.init({"a": params["a"]}), tx_b.init({"b": params["b"]})
  frozen = objective.frozen()
  history = []
  for step in range(steps):
    batch = {"x": DATA[step * BATCH:(step + 1) * BATCH]}
    key = jax.random.fold_in(run_key, step)
    grads_fn = jax.grad(lambda a: loss_a({"a": a, "b": params["b"]}, model_state, frozen, batch,
                                         jax.random.fold_in(key, 0))[0])
    updates, opt_a = tx_a.update({"a": grads_fn(params["a"])}, opt_a, {"a": params["a"]})
    params = dict(params, a=optax.apply_updates({"a": params["a"]}, updates)["a"])
    model_state = {"count": model_state["count"] + 1}
    grads_fn = jax.grad(lambda b: loss_b({"a": params["a"], "b": b}, model_state, frozen, batch,
                                         jax.random.fold_in(key, 1))[0])
    updates, opt_b = tx_b.update({"b": grads_fn(params["b"])}, opt_b, {"b": params["b"]})
    params = dict(params, b=optax.apply_updates({"b": params["b"]}, updates)["b"])
    model_state = {"count": model_state["count"] + 10}
    history.append(params)
  return history, model_state, {"first": opt_a, "second": opt_b}


def test_two_groups_match_a_hand_written_optax_loop(tmp_path):
  last = trainer.train(toy_config(), str(tmp_path), TwoPlayers(), ArrayLoader(DATA), 6)
  assert last["completed"] == 1.0
  expected, model_state, opt_states = reference(3)
  for step in (1, 2, 3):
    state = read_state(tmp_path, step)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                 state["params"], jax.tree.map(np.asarray, expected[step - 1]))
  # Every optimizer's state is in the checkpoint, keyed by group.
  assert set(state["opt_state"]) == {"first", "second"}
  # Restored as plain containers: chain(adamw) -> [[adam {count, mu, nu}, decay, lr]].
  for group, path in (("first", ("a", "w")), ("second", ("b", "v"))):
    adam = state["opt_state"][group][0][0]
    for moment in ("mu", "nu"):
      np.testing.assert_allclose(adam[moment][path[0]][path[1]],
                                 getattr(opt_states[group][0], moment)[path[0]][path[1]],
                                 rtol=1e-5, atol=1e-9)
  # Model state threads through both groups in order, once per group per step.
  assert float(state["model_state"]["count"]) == float(model_state["count"]) == 33.0
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["count_seen"] for r in rows] == [1.0, 12.0, 23.0]
  for key in ("loss", "a_loss", "b_loss", "first/loss", "second/loss", "first/lr",
              "second/lr", "first/grad_norm", "second/update_norm", "param_norm"):
    assert key in rows[0], key
  assert rows[0]["loss"] == rows[0]["first/loss"]
  assert rows[0]["first/lr"] == pytest.approx(0.1) and rows[0]["second/lr"] == pytest.approx(0.03)
  assert (tmp_path / "loss_curves.png").exists() and (tmp_path / "model").is_dir()


def test_stop_and_resume_is_bit_identical(tmp_path):
  config = toy_config(total_steps=5, ema_decay=0.9)
  trainer.train(config, str(tmp_path / "straight"), TwoPlayers(), ArrayLoader(DATA), 6)
  stopped = trainer.train(toy_config(total_steps=5, ema_decay=0.9, stop_after_steps=2),
                          str(tmp_path / "resumed"), TwoPlayers(), ArrayLoader(DATA), 6)
  assert stopped["completed"] == 0.0
  trainer.train(config, str(tmp_path / "resumed"), TwoPlayers(), ArrayLoader(DATA), 6)
  a, b = read_state(tmp_path / "straight", 5), read_state(tmp_path / "resumed", 5)
  for key in ("params", "opt_state", "ema_params", "model_state"):
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):
      np.testing.assert_array_equal(x, y)
  rows = lambda d: [json.loads(line) for line in open(d / "metrics.jsonl")]
  assert rows(tmp_path / "straight") == rows(tmp_path / "resumed")


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  data = DATA.copy()
  data[BATCH + 1, 0] = np.nan  # the second step's batch
  with pytest.raises(trainer.NonFiniteLossError, match="at step 2"):
    trainer.train(toy_config(total_steps=4), str(tmp_path), TwoPlayers(), ArrayLoader(data), 6)
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [1]


def test_group_config_errors_and_orphans():
  config = toy_config()
  config.optimizers.second.lrr = 1.0
  with pytest.raises(ValueError, match="optimizers.second sets lrr"):
    trainer.build(config, TwoPlayers(), {"x": DATA[:1]}, trainer.Schedule(3, 0))

  class OnlyA(TwoPlayers):
    def update_groups(self):
      return {"first": UpdateGroup(("a",), loss_a)}
  with pytest.raises(ValueError, match=r"\['b'\] are in no update group"):
    trainer.build(toy_config(), OnlyA(), {"x": DATA[:1]}, trainer.Schedule(3, 0))


def test_one_optimizer_objective_keeps_its_state_layout():
  """Without update groups the state's opt_state is optax's own (old checkpoints resume)."""
  class Joint(TwoPlayers):
    update_groups = property()  # hides the method: hasattr(...) is False
    def loss(self, params, model_state, frozen, batch, rng):
      la, (ma, ms) = loss_a(params, model_state, frozen, batch, rng)
      lb, (mb, ms) = loss_b(params, ms, frozen, batch, rng)
      return la + lb, ({**ma, **mb}, ms)
  objective = Joint()
  assert not hasattr(objective, "update_groups")
  setup = trainer.build(toy_config(), objective, {"x": DATA[:1]}, trainer.Schedule(3, 0))
  state = setup.init(jax.random.key(0))
  params = state.params
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(
      optax.chain(optax.adamw(lambda step: 0.1, weight_decay=0.2,
                              mask={"a": {"w": True}, "b": {"v": False}})).init(params))
  batch = jax.device_put({"x": DATA[:BATCH]}, setup.batch_sharding)
  _, metrics = setup.step_fn(state, batch, setup.frozen)
  assert {"loss", "lr", "grad_norm", "update_norm", "param_norm", "a_loss"} <= set(metrics)
