"""Optimizer pieces against their formulas: warmup+cosine, decay masks, layer ids, AdamW."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kt_jax.train import optimizer


def test_schedule_matches_warmup_cosine_formula():
  peak, total, warmup, start, floor = 1e-3, 100, 10, 1e-6, 1e-5
  schedule = optimizer.learning_rate_schedule(peak, total, warmup, start, floor)
  for step in (0, 5, 10, 40, 99, 100):
    if step < warmup:
      expected = start + (peak - start) * step / warmup
    else:
      t = (step - warmup) / (total - warmup)
      expected = floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)


def test_weight_decay_mask_skips_norms_biases_tokens():
  params = {"student": {"pos_embed": jnp.zeros((1, 5, 4)), "cls_token": jnp.zeros((1, 1, 4)),
                        "blocks_0": {"attn": {"qkv": {"kernel": jnp.zeros((4, 12)),
                                                      "bias": jnp.zeros((12,))}},
                                     "norm1": {"scale": jnp.zeros((4,))}}}}
  mask = optimizer.weight_decay_mask(params, ("pos_embed", "cls_token"))
  assert mask["student"]["blocks_0"]["attn"]["qkv"] == {"kernel": True, "bias": False}
  assert not mask["student"]["pos_embed"] and not mask["student"]["cls_token"]
  assert not mask["student"]["blocks_0"]["norm1"]["scale"]
  # Without names, tokens of ndim > 1 decay, as timm's param groups do.
  assert optimizer.weight_decay_mask(params)["student"]["pos_embed"]


def test_layer_ids_for_layerwise_decay():
  assert optimizer.layer_id("student/patch_embed/kernel", 12) == 0
  assert optimizer.layer_id("student/blocks_3/mlp/fc1/kernel", 12) == 4
  assert optimizer.layer_id("heads/token_head/linear/kernel", 12) == 13


def test_adamw_step_matches_torch_formula():
  """One AdamW step from zero state, as torch.optim.AdamW computes it (decoupled decay)."""
  cfg = ml_collections.ConfigDict(dict(lr=0.1, lr_base_batch=0, warmup_init=0.1, min_lr=0.1,
                                       weight_decay=0.05, no_decay_names=(), b1=0.9, b2=0.999,
                                       eps=1e-8))
  p = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.asarray([0.3, -0.1])}
  g = {"w": jnp.asarray([[0.1, 0.2], [-0.3, 0.4]]), "b": jnp.asarray([1.0, -1.0])}
  tx, _ = optimizer.make_optimizer(cfg, p, total_steps=10, warmup_steps=0, global_batch_size=8)
  updates, _ = tx.update(g, tx.init(p), p)
  new = optax.apply_updates(p, updates)
  for k in p:
    m, v = 0.1 * np.asarray(g[k]), 0.001 * np.asarray(g[k]) ** 2
    m_hat, v_hat = m / 0.1, v / 0.001
    wd = 0.05 if np.asarray(p[k]).ndim > 1 else 0.0
    expected = np.asarray(p[k]) * (1 - 0.1 * wd) - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(np.asarray(new[k]), expected, rtol=1e-5, atol=1e-6)


def test_linear_lr_scaling_rule():
  cfg = ml_collections.ConfigDict(dict(lr=5e-4, lr_base_batch=512))
  assert optimizer.peak_learning_rate(cfg, 1024) == 1e-3


def test_frozen_leaves_get_zero_updates_and_the_rest_train_as_alone():
  """`freeze`: the matching leaves stay bit-identical over steps and hold no Adam moments; the
  others get exactly the updates the same optimizer gives them without the frozen leaves
  (clipping and layer decay included)."""
  cfg = ml_collections.ConfigDict(dict(lr=0.1, lr_base_batch=0, warmup_init=0.1, min_lr=0.1,
                                       weight_decay=0.05, grad_clip_norm=0.5, layer_decay=0.7,
                                       freeze=("^model/backbone/",)))
  rng = np.random.RandomState(0)
  backbone = {"blocks_0": {"kernel": jnp.asarray(rng.randn(3, 3), jnp.float32)},
              "blocks_1": {"kernel": jnp.asarray(rng.randn(3, 3), jnp.float32)}}
  head = {"kernel": jnp.asarray(rng.randn(3, 2), jnp.float32), "bias": jnp.zeros(2)}
  params = {"model": {"backbone": backbone, "head": head}}
  tx, _ = optimizer.make_optimizer(cfg, params, 10, 0, 8)
  alone_cfg = ml_collections.ConfigDict(dict(cfg.to_dict(), freeze=()))
  alone_tx, _ = optimizer.make_optimizer(alone_cfg, {"model": {"head": head}}, 10, 0, 8)
  state, alone_state = tx.init(params), alone_tx.init({"model": {"head": head}})
  assert not [x for x in jax.tree.leaves(state) if x.shape == (3, 3)]  # no backbone moments
  alone = {"model": {"head": head}}
  for step in range(3):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.randn(*x.shape), x.dtype), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    alone_updates, alone_state = alone_tx.update({"model": {"head": grads["model"]["head"]}},
                                                 alone_state, alone)
    alone = optax.apply_updates(alone, alone_updates)
  for name, leaf in backbone.items():
    np.testing.assert_array_equal(params["model"]["backbone"][name]["kernel"], leaf["kernel"])
  for k in head:
    np.testing.assert_array_equal(params["model"]["head"][k], alone["model"]["head"][k])


def test_multistep_schedule_matches_step_decay_formula_and_torch():
  peak, total, warmup, start = 0.3, 50, 5, 0.0
  schedule = optimizer.multistep_schedule(peak, total, warmup, start, (0.3, 0.6, 0.9), 0.1)
  milestones = [15, 30, 45]
  for step in range(total):
    if step < warmup:
      expected = start + (peak - start) * step / warmup
    else:
      expected = peak * 0.1 ** sum(step >= m for m in milestones)
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)
  # Without warmup it is torch's MultiStepLR (lr read before each optimizer step).
  import torch
  schedule = optimizer.multistep_schedule(peak, total, 0, start, (0.3, 0.6, 0.9), 0.1)
  opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
  torch_sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
  for step in range(total):
    np.testing.assert_allclose(float(schedule(step)), opt.param_groups[0]["lr"], rtol=1e-5)
    opt.step()
    torch_sched.step()


def test_sgd_nesterov_steps_match_torch_sgd():
  """Five SGD steps (Nesterov momentum 0.9, L2 weight decay on kernels only, multi-step lr)
  against torch.optim.SGD with MultiStepLR, and the first against the formula."""
  import torch
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", momentum=0.9, nesterov=True, lr=0.1, lr_base_batch=0, warmup_init=0.0,
      weight_decay=1e-2, no_decay_names=(), schedule="multistep", decay_boundaries=(0.4,),
      decay_factor=0.1))
  rng = np.random.RandomState(0)
  p = {"w": jnp.asarray(rng.randn(3, 2), jnp.float32), "b": jnp.asarray(rng.randn(2), jnp.float32)}
  grads = [{k: jnp.asarray(rng.randn(*np.shape(v)), jnp.float32) for k, v in p.items()}
           for _ in range(5)]
  tx, _ = optimizer.make_optimizer(cfg, p, total_steps=5, warmup_steps=0, global_batch_size=8)
  state, params = tx.init(p), p
  tw = torch.nn.Parameter(torch.tensor(np.asarray(p["w"])))
  tb = torch.nn.Parameter(torch.tensor(np.asarray(p["b"])))
  opt = torch.optim.SGD([{"params": [tw], "weight_decay": 1e-2},
                         {"params": [tb], "weight_decay": 0.0}], lr=0.1, momentum=0.9,
                        nesterov=True)
  sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2], gamma=0.1)
  for i, g in enumerate(grads):
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    if i == 0:  # b = g + wd p; step = -lr (g' + 0.9 b) with g' = b on the first step
      g_w = np.asarray(g["w"]) + 1e-2 * np.asarray(p["w"])
      np.testing.assert_allclose(np.asarray(params["w"]),
                                 np.asarray(p["w"]) - 0.1 * 1.9 * g_w, rtol=1e-5, atol=1e-6)
    tw.grad, tb.grad = torch.tensor(np.asarray(g["w"])), torch.tensor(np.asarray(g["b"]))
    opt.step()
    sched.step()
    np.testing.assert_allclose(np.asarray(params["w"]), tw.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(params["b"]), tb.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
