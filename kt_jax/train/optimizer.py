"""AdamW (or SGD with momentum) with warmup + cosine (or multi-step) decay, decay masks,
optional clipping, layer-wise lr decay and frozen parameters.

Built from `config.optimizer` (for an objective with several update groups, one optimizer per
group from `group_config`); the schedule is per step (the official DeiT/Proteus code steps
timm's scheduler once per epoch; per-step is the smooth version of the same curve).
"""
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int,
                           warmup_init: float, min_lr: float) -> optax.Schedule:
  """Linear warmup from `warmup_init` to `peak`, then cosine down to `min_lr` at the end."""
  warmup_steps = min(warmup_steps, total_steps)
  return optax.join_schedules([
      optax.linear_schedule(warmup_init, peak, max(warmup_steps, 1)),
      optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1),
                                  alpha=min_lr / peak if peak else 0.0),
  ], [warmup_steps])


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "multistep")


def multistep_schedule(peak: float, total_steps: int, warmup_steps: int, warmup_init: float,
                       boundaries=(0.3, 0.6, 0.9), factor: float = 0.1) -> optax.Schedule:
  """Linear warmup from `warmup_init` to `peak`, then `peak` times `factor` once per boundary
  passed: the lr of step t >= warmup is peak * factor ** #{b : t >= round(b * total_steps)}
  (`boundaries` are fractions of the whole run, as BiT's and One-to-Transfer-All's step decay;
  torch's MultiStepLR with milestones round(b * total_steps))."""
  warmup_steps = min(warmup_steps, total_steps)
  milestones = sorted({int(round(b * total_steps)) for b in boundaries})
  def schedule(step):
    step = jnp.asarray(step)
    warm = warmup_init + (peak - warmup_init) * step / max(warmup_steps, 1)
    passed = sum((step >= m).astype(jnp.float32) for m in milestones) if milestones else 0.0
    decayed = peak * jnp.power(factor, passed)
    return jnp.where(step < warmup_steps, warm, decayed)
  return schedule


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def weight_decay_mask(params, no_decay_names=()) -> Any:
  """True where weight decay applies: matrices and kernels, not norms, biases or 1-D scales,
  nor any leaf whose path contains one of `no_decay_names` (e.g. pos_embed, cls_token)."""
  def decays(path, leaf):
    name = _path_str(path)
    return leaf.ndim > 1 and not any(n in name for n in no_decay_names)
  return jax.tree_util.tree_map_with_path(decays, params)


def layer_id(path: str, num_layers: int) -> int:
  """DINOv2/BEiT layer ids: embeddings 0, block i -> i + 1, everything after -> num_layers + 1."""
  if m := re.search(r"blocks_(\d+)", path):
    return int(m.group(1)) + 1
  if any(n in path for n in ("patch_embed", "pos_embed", "cls_token", "mask_token",
                             "register_tokens")):
    return 0
  return num_layers + 1


def layerwise_scale(params, decay: float, num_layers: int):
  """Per-leaf lr multipliers decay ** (num_layers + 1 - layer_id)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: decay ** (num_layers + 1 - layer_id(_path_str(p), num_layers)), params)


def _scale_by_tree(factors) -> optax.GradientTransformation:
  def update(updates, state, params=None):
    return jax.tree.map(lambda u, f: u * f, updates, factors), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def peak_learning_rate(opt_cfg, global_batch_size: int) -> float:
  """DeiT's linear scaling rule: lr * batch / lr_base_batch (0 disables scaling)."""
  base = opt_cfg.get("lr_base_batch", 0)
  return opt_cfg.lr * global_batch_size / base if base else opt_cfg.lr


def group_config(config, group: str | None):
  """The optimizer config of update group `group`: `config.optimizer` with the keys of
  `config.optimizers.<group>` (if any) over it, e.g. `--config.optimizers.discriminator.lr=1e-4`.
  None: the one optimizer of a one-group objective."""
  import ml_collections
  overrides = config.get("optimizers", {}).get(group) if group is not None else None
  if not overrides:
    return config.optimizer
  overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
  unknown = sorted(set(overrides) - set(config.optimizer))
  if unknown:
    raise ValueError(f"config.optimizers.{group} sets {', '.join(unknown)}, which "
                     f"config.optimizer does not have (it has {', '.join(sorted(config.optimizer))}).")
  return ml_collections.ConfigDict(dict(config.optimizer.to_dict(), **overrides))


def frozen_mask(params, patterns) -> Any:
  """True for every leaf whose 'a/b/c' path matches one of the regexes `patterns`."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda p, _: any(c.search(_path_str(p)) for c in compiled), params)


def make_optimizer(opt_cfg, params, total_steps: int, warmup_steps: int,
                   global_batch_size: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`opt_cfg.freeze` (regexes on parameter paths such as 'model/backbone/'): those leaves get
  exactly zero updates and no optimizer state (linear probing); the others train as usual,
  their gradient clipping and weight decay blind to the frozen ones."""
  patterns = tuple(opt_cfg.get("freeze", ()) or ())
  if not patterns:
    return _make_trainable(opt_cfg, params, total_steps, warmup_steps, global_batch_size)
  frozen = frozen_mask(params, patterns)
  labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
  # The trained transform sees (and builds its decay mask and lr factors on) the trained
  # leaves only, exactly the tree multi_transform hands it.
  trained = jax.tree.map(lambda p, f: optax.MaskedNode() if f else p, params, frozen)
  tx, schedule = _make_trainable(opt_cfg, trained, total_steps, warmup_steps,
                                 global_batch_size)
  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels), schedule


def _make_trainable(opt_cfg, params, total_steps: int, warmup_steps: int,
                    global_batch_size: int):
  peak = peak_learning_rate(opt_cfg, global_batch_size)
  name, kind = opt_cfg.get("name", "adamw"), opt_cfg.get("schedule", "cosine")
  if name not in OPTIMIZERS or kind not in SCHEDULES:
    raise ValueError(f"optimizer.name={name!r} / optimizer.schedule={kind!r}: expected one of "
                     f"{OPTIMIZERS} / {SCHEDULES}.")
  if kind == "multistep":
    schedule = multistep_schedule(peak, total_steps, warmup_steps,
                                  opt_cfg.get("warmup_init", 0.0),
                                  tuple(opt_cfg.get("decay_boundaries", (0.3, 0.6, 0.9))),
                                  opt_cfg.get("decay_factor", 0.1))
  else:
    schedule = learning_rate_schedule(peak, total_steps, warmup_steps,
                                      opt_cfg.get("warmup_init", 0.0), opt_cfg.get("min_lr", 0.0))
  parts = []
  if opt_cfg.get("grad_clip_norm"):
    parts.append(optax.clip_by_global_norm(opt_cfg.grad_clip_norm))
  mask = weight_decay_mask(params, tuple(opt_cfg.get("no_decay_names", ())))
  if name == "sgd":
    # torch.optim.SGD: the decay is added to the gradient (L2, coupled) before the momentum
    # buffer b = momentum * b + g; Nesterov steps along g + momentum * b.
    if opt_cfg.weight_decay:
      parts.append(optax.add_decayed_weights(opt_cfg.weight_decay, mask))
    parts.append(optax.sgd(schedule, momentum=opt_cfg.get("momentum", 0.9) or None,
                           nesterov=bool(opt_cfg.get("nesterov", False))))
  else:
    parts.append(optax.adamw(schedule, b1=opt_cfg.get("b1", 0.9), b2=opt_cfg.get("b2", 0.999),
                             eps=opt_cfg.get("eps", 1e-8), weight_decay=opt_cfg.weight_decay,
                             mask=mask))
  if opt_cfg.get("layer_decay"):
    depth = max((layer_id(_path_str(p), 10**6) for p, _ in
                 traverse_util.flatten_dict(params).items() if "blocks_" in "/".join(p)),
                default=0)
    parts.append(_scale_by_tree(layerwise_scale(params, opt_cfg.layer_decay, depth)))
  return optax.chain(*parts), schedule


def ema_update(ema, params, decay: float):
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)


def global_norm(tree) -> jax.Array:
  return optax.global_norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))
