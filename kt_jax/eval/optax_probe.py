"""Linear probe at ImageNet scale: logistic regression with optax, on device, over a grid.

DINOv2's linear evaluation trains many linear heads at once on the same frozen features
(SGD with momentum 0.9, cosine learning rate, ~10 epochs at batch 1024) and keeps the best.
Here every (lr, weight decay) pair of a small grid is one head, all trained together in one
compiled loop (one matmul (batch, D) x (D, heads * C) per step), on the training rows minus a
held-out part; the head with the best accuracy on that held-out part is chosen and, by
default, retrained on all training rows. The test set never influences the choice.

Features are standardised with the training rows' mean and std (as the sklearn probe does),
applied per batch on device. Rows are split over every device of the mesh (data parallel:
each device samples its batch from its own rows, gradients are averaged), so the feature
matrix never needs to fit on one device and processes each hold only their devices' rows
on device.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from kt_jax import sharding

LR_GRID = (1e-3, 1e-2, 1e-1)
WD_GRID = (0.0, 1e-4, 1e-3)


def _rows_spec(mesh):
  return P(tuple(mesh.axis_names))


def _place_rows(x: np.ndarray, mesh) -> tuple[jax.Array, int]:
  """Host rows (every process holds them whole) split over every device, zero-padded."""
  n = x.shape[0]
  local = max(1, -(-n // mesh.size))
  total = local * mesh.size

  def shard(index):
    rows = index[0]
    start, stop = rows.start or 0, rows.stop if rows.stop is not None else total
    out = np.zeros((stop - start,) + x.shape[1:], x.dtype)
    have = x[start:min(stop, n)]
    out[:len(have)] = have
    return out
  spec = NamedSharding(mesh, P(tuple(mesh.axis_names), *([None] * (x.ndim - 1))))
  return jax.make_array_from_callback((total,) + x.shape[1:], spec, shard), local


def _head_optimizer(lr, wd, steps: int):
  return optax.chain(optax.add_decayed_weights(wd),
                     optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=0.9))


@functools.lru_cache(maxsize=16)
def _train_fn(mesh, steps: int, local_batch: int, num_classes: int, local_rows: int):
  axes = tuple(mesh.axis_names)

  def per_device(feats, labels, num_valid, mean, std, lrs, wds, key):
    offset = jax.lax.axis_index(axes) * local_rows
    local_valid = jnp.clip(num_valid - offset, 0, local_rows)
    dim, heads = feats.shape[-1], lrs.shape[0]
    params = {"w": jnp.zeros((heads, dim, num_classes)), "b": jnp.zeros((heads, num_classes))}
    init = jax.vmap(lambda lr, wd, p: _head_optimizer(lr, wd, steps).init(p))
    opt_state = init(lrs, wds, params)

    def loss_fn(p, x, y, weight):
      logits = jnp.einsum("bd,hdc->hbc", x, p["w"]) + p["b"][:, None]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[None])
      return jnp.sum(jnp.mean(ce * weight, axis=-1))  # heads are independent: sum

    def step(i, carry):
      p, s = carry
      k = jax.random.fold_in(jax.random.fold_in(key, i), jax.lax.axis_index(axes))
      rows = jax.random.randint(k, (local_batch,), 0, jnp.maximum(local_valid, 1))
      x = (feats[rows] - mean) / std
      weight = (local_valid > 0).astype(jnp.float32)
      grads = jax.lax.pmean(jax.grad(loss_fn)(p, x, labels[rows], weight), axes)

      def update(lr, wd, g, s_h, p_h):
        updates, s_h = _head_optimizer(lr, wd, steps).update(g, s_h, p_h)
        return optax.apply_updates(p_h, updates), s_h
      p, s = jax.vmap(update)(lrs, wds, grads, s, p)
      return p, s

    params, _ = jax.lax.fori_loop(0, steps, step, (params, opt_state))
    return params

  fn = jax.shard_map(per_device, mesh=mesh,
                     in_specs=(_rows_spec(mesh), _rows_spec(mesh)) + (P(),) * 6,
                     out_specs=P(), check_vma=False)
  return jax.jit(fn)


@functools.lru_cache(maxsize=16)
def _correct_fn(mesh, local_rows: int, chunk: int):
  axes = tuple(mesh.axis_names)

  def per_device(feats, labels, num_valid, mean, std, params):
    offset = jax.lax.axis_index(axes) * local_rows
    pad = -local_rows % chunk
    x = jnp.pad(feats, ((0, pad), (0, 0))).reshape(-1, chunk, feats.shape[-1])
    y = jnp.pad(labels, (0, pad)).reshape(-1, chunk)
    rows = offset + jnp.arange(local_rows + pad).reshape(-1, chunk)

    def count(args):
      xc, yc, rc = args
      logits = jnp.einsum("bd,hdc->hbc", (xc - mean) / std, params["w"]) + params["b"][:, None]
      hit = (jnp.argmax(logits, -1) == yc[None]) & (rc < num_valid)[None]
      return jnp.sum(hit, axis=-1)
    return jax.lax.psum(jnp.sum(jax.lax.map(count, (x, y, rows)), axis=0), axes)

  fn = jax.shard_map(per_device, mesh=mesh,
                     in_specs=(_rows_spec(mesh), _rows_spec(mesh)) + (P(),) * 4,
                     out_specs=P(), check_vma=False)
  return jax.jit(fn)


def _moments(x: np.ndarray, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std per column in float64, in row blocks (no float64 copy of the matrix)."""
  total, sq = np.zeros(x.shape[1]), np.zeros(x.shape[1])
  for start in range(0, len(x), block):
    b = x[start:start + block].astype(np.float64)
    total += b.sum(0)
    sq += (b * b).sum(0)
  mean = total / len(x)
  std = np.sqrt(np.maximum(sq / len(x) - mean**2, 0.0))
  return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


class _Placed:
  """Rows of one feature set placed on the mesh, with its labels."""

  def __init__(self, feats, labels, mesh):
    self.n = len(feats)
    self.x, self.local_rows = _place_rows(np.asarray(feats, np.float32), mesh)
    self.y, _ = _place_rows(np.asarray(labels, np.int32), mesh)


def train_heads(train: _Placed, num_classes: int, lrs, wds, mean, std, mesh, epochs: float,
                batch_size: int, min_steps: int, seed: int):
  """Trains one head per (lr, wd) pair on `train`; returns {"w": (H, D, C), "b": (H, C)}."""
  local_batch = max(1, -(-min(batch_size, train.n) // mesh.size))
  steps = max(min_steps, int(np.ceil(epochs * train.n / (local_batch * mesh.size))))
  fn = _train_fn(mesh, steps, local_batch, num_classes, train.local_rows)
  replicated = lambda a: jax.device_put(np.asarray(a), NamedSharding(mesh, P()))
  return fn(train.x, train.y, replicated(np.int32(train.n)), replicated(mean), replicated(std),
            replicated(np.asarray(lrs, np.float32)), replicated(np.asarray(wds, np.float32)),
            jax.random.key(seed))


def accuracies(params, data: _Placed, mean, std, mesh, chunk: int = 4096) -> np.ndarray:
  """Top-1 accuracy of every head on `data`, float (H,)."""
  replicated = lambda a: jax.device_put(np.asarray(a), NamedSharding(mesh, P()))
  fn = _correct_fn(mesh, data.local_rows, min(chunk, data.local_rows))
  correct = fn(data.x, data.y, replicated(np.int32(data.n)), replicated(mean), replicated(std),
               params)
  return sharding.to_host(correct) / max(data.n, 1)


def linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes=None,
                          lr_grid=LR_GRID, wd_grid=WD_GRID, val_fraction: float = 0.1,
                          max_val: int = 50_000, epochs: float = 10.0, batch_size: int = 1024,
                          min_steps: int = 500, refit: bool = True, seed: int = 0,
                          mesh=None) -> dict:
  """dict(accuracy=test top-1, lr, weight_decay, val_accuracy, heads=len(grid)).

  A random `val_fraction` of the training rows (at most `max_val`) picks the grid point; the
  chosen (lr, wd) is then retrained on all training rows when `refit`."""
  mesh = mesh or sharding.make_mesh()
  train_feats = np.asarray(train_feats, np.float32)
  train_labels = np.asarray(train_labels, np.int32)
  num_classes = int(num_classes or int(train_labels.max()) + 1)
  grid = [(lr, wd) for lr in lr_grid for wd in wd_grid]
  lrs, wds = zip(*grid)
  mean, std = _moments(train_feats)
  order = np.random.default_rng(seed).permutation(len(train_labels))
  n_val = min(max_val, int(round(val_fraction * len(order))))
  val_idx, fit_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
  best, val_accuracy = 0, None
  if len(grid) > 1 and n_val > 0:
    fit = _Placed(train_feats[fit_idx], train_labels[fit_idx], mesh)
    params = train_heads(fit, num_classes, lrs, wds, mean, std, mesh, epochs, batch_size,
                         min_steps, seed)
    val_scores = accuracies(params, _Placed(train_feats[val_idx], train_labels[val_idx], mesh),
                            mean, std, mesh)
    best = int(np.argmax(val_scores))  # ties: the first, i.e. the smaller lr and wd
    val_accuracy = float(val_scores[best])
    if not refit:
      chosen = jax.tree.map(lambda a: a[best:best + 1], params)
  if refit or val_accuracy is None:
    chosen = train_heads(_Placed(train_feats, train_labels, mesh), num_classes,
                         lrs[best:best + 1], wds[best:best + 1], mean, std, mesh, epochs,
                         batch_size, min_steps, seed)
  test = _Placed(np.asarray(test_feats, np.float32), np.asarray(test_labels, np.int32), mesh)
  accuracy = float(accuracies(chosen, test, mean, std, mesh)[0])
  return dict(accuracy=accuracy, lr=float(lrs[best]), weight_decay=float(wds[best]),
              val_accuracy=val_accuracy, heads=len(grid))
