"""VQGAN (taming-transformers, LlamaGen/Janus's VQ-16): conv encoder, codebook, conv decoder.

The layout mirrors transformers' `JanusVQVAE` (LlamaGen's VQGAN, itself taming's encoder and
decoder), so `kt_jax.convert.vqgan` maps its state dict leaf by leaf: submodule names are its
keys with dots turned into underscores (`encoder.down.0.block.1` -> `encoder/down_0_block_1`).
Residual blocks are GroupNorm(32) + swish + 3x3 conv twice; single-head attention runs after
every block of the lowest resolution and in the middle block; each of the
`len(channel_multiplier) - 1` downsamplings halves the grid (factor 16 for five levels, 8 for
four). Images are NHWC in [-1, 1].

The codebook (`VectorQuantizer`):
- nearest code by squared distance, straight-through estimator `z + sg(q - z)`;
- `l2_normalize` (LlamaGen, on for Janus): z and the codes are unit-normalised before the
  lookup, so the nearest code is the one of highest cosine; `z` in the outputs is then the
  normalised vector (the straight-through identity holds for it);
- losses as in the VQ-VAE paper: commitment `beta * mean((sg(q) - z)^2)` and codebook
  `mean((q - sg(z))^2)`. (Janus/taming's code puts beta on the codebook term instead, a known
  legacy quirk; the sum of the two is returned separately here so a trainer chooses.)
- `ema`: the codes are exponential moving averages of the vectors assigned to them (VQ-VAE-2),
  kept with their statistics in the mutable collection `codebook_ema`, not in `params`; the
  codebook loss is then 0. Updated only when `train=True` and the collection is mutable
  (`apply(..., mutable=['codebook_ema'])`), like BatchNorm statistics.
- `dead_code_threshold` > 0 (needs `ema`): a code whose EMA assignment count falls below it is
  restarted at a random vector of the current batch (Jukebox / vector-quantize-pytorch),
  deterministic given the update counter, so no RNG stream has to be threaded through.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.models import registry

EMA_COLLECTION = "codebook_ema"


def _normalise(x, eps: float = 1e-12):
  """F.normalize(x, dim=-1): x / max(||x||, eps)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _group_norm(num_groups: int, name: str, dtype: Any) -> nn.GroupNorm:
  # Two-pass variance: E[x^2] - E[x]^2 loses digits on large activations.
  return nn.GroupNorm(num_groups=num_groups, epsilon=1e-6, use_fast_variance=False,
                      dtype=dtype, name=name)


def _conv(features: int, kernel: int, name: str, dtype: Any, stride: int = 1,
          padding: Any = None) -> nn.Conv:
  pad = kernel // 2 if padding is None else padding
  if isinstance(pad, int):
    pad = [(pad, pad)] * 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=pad, dtype=dtype,
                 name=name)


class ResnetBlock(nn.Module):
  out_channels: int
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.swish(_group_norm(self.num_groups, "norm1", self.dtype)(x))
    h = _conv(self.out_channels, 3, "conv1", self.dtype)(h)
    h = nn.swish(_group_norm(self.num_groups, "norm2", self.dtype)(h))
    h = _conv(self.out_channels, 3, "conv2", self.dtype)(h)  # dropout 0 in every release
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "nin_shortcut", self.dtype)(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the h*w positions, channels as the head dim."""
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = _group_norm(self.num_groups, "norm", self.dtype)(x)
    q, k, v = (_conv(c, 1, n, self.dtype)(y).reshape(b, h * w, c) for n in ("q", "k", "v"))
    weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) * c ** -0.5, axis=-1)
    out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, h, w, c)
    return x + _conv(c, 1, "proj_out", self.dtype)(out)


class Downsample(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    # taming pads right and bottom by one, then a stride-2 3x3 conv without padding.
    return _conv(x.shape[-1], 3, "conv", self.dtype, stride=2, padding=[(0, 1), (0, 1)])(x)


class Upsample(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest, x2
    return _conv(x.shape[-1], 3, "conv", self.dtype)(x)


def _mid(x, channels: int, num_groups: int, dtype: Any):
  x = ResnetBlock(channels, num_groups, dtype, name="mid_block_1")(x)
  x = AttnBlock(num_groups, dtype, name="mid_attn_1")(x)
  return ResnetBlock(channels, num_groups, dtype, name="mid_block_2")(x)


class Encoder(nn.Module):
  base_channels: int
  channel_multiplier: Sequence[int]
  num_res_blocks: int
  latent_channels: int
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    levels = len(self.channel_multiplier)
    x = _conv(self.base_channels, 3, "conv_in", self.dtype)(x)
    for i, mult in enumerate(self.channel_multiplier):
      for j in range(self.num_res_blocks):
        x = ResnetBlock(self.base_channels * mult, self.num_groups, self.dtype,
                        name=f"down_{i}_block_{j}")(x)
        if i == levels - 1:
          x = AttnBlock(self.num_groups, self.dtype, name=f"down_{i}_attn_{j}")(x)
      if i != levels - 1:
        x = Downsample(self.dtype, name=f"down_{i}_downsample")(x)
    x = _mid(x, x.shape[-1], self.num_groups, self.dtype)
    x = nn.swish(_group_norm(self.num_groups, "norm_out", self.dtype)(x))
    return _conv(self.latent_channels, 3, "conv_out", self.dtype)(x)


class Decoder(nn.Module):
  """`up_0` is the lowest resolution (transformers' order; taming's `up` is reversed)."""
  base_channels: int
  channel_multiplier: Sequence[int]
  num_res_blocks: int
  out_channels: int = 3
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    levels = len(self.channel_multiplier)
    channels = self.base_channels * self.channel_multiplier[-1]
    x = _conv(channels, 3, "conv_in", self.dtype)(x)
    x = _mid(x, channels, self.num_groups, self.dtype)
    for k, level in enumerate(reversed(range(levels))):
      for j in range(self.num_res_blocks + 1):
        x = ResnetBlock(self.base_channels * self.channel_multiplier[level], self.num_groups,
                        self.dtype, name=f"up_{k}_block_{j}")(x)
        if level == levels - 1:
          x = AttnBlock(self.num_groups, self.dtype, name=f"up_{k}_attn_{j}")(x)
      if level != 0:
        x = Upsample(self.dtype, name=f"up_{k}_upsample")(x)
    x = nn.swish(_group_norm(self.num_groups, "norm_out", self.dtype)(x))
    return _conv(self.out_channels, 3, "conv_out", self.dtype)(x)


def _codebook_init(key, shape, dtype=jnp.float32):
  """taming's init: uniform(-1/K, 1/K)."""
  return jax.random.uniform(key, shape, dtype, -1.0 / shape[0], 1.0 / shape[0])


def codebook_statistics(indices, codebook_size: int) -> dict:
  """Perplexity exp(H(p)) of the batch's code histogram and the fraction of codes used."""
  counts = jnp.zeros((codebook_size,), jnp.float32).at[indices.reshape(-1)].add(1.0)
  probs = counts / jnp.maximum(counts.sum(), 1.0)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)),
                               0.0))
  return {"perplexity": jnp.exp(entropy), "usage": jnp.mean((counts > 0).astype(jnp.float32)),
          "counts": counts}


def nearest_code(z, codes):
  """Indices of the nearest rows of `codes` (K, D) to each vector of z (..., D), squared L2."""
  flat = z.reshape(-1, z.shape[-1])
  distances = (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(codes ** 2, axis=1)[None]
               - 2.0 * flat @ codes.T)
  return jnp.argmin(distances, axis=1).astype(jnp.int32).reshape(z.shape[:-1])


class VectorQuantizer(nn.Module):
  codebook_size: int
  codebook_dim: int
  beta: float = 0.25
  l2_normalize: bool = False
  ema: bool = False
  ema_decay: float = 0.99
  ema_epsilon: float = 1e-5
  dead_code_threshold: float = 0.0

  def setup(self):
    shape = (self.codebook_size, self.codebook_dim)
    if self.ema:
      init = lambda: _codebook_init(self.make_rng("params"), shape)  # noqa: E731
      self.embedding = self.variable(EMA_COLLECTION, "embedding", init)
      # Each code starts as if one vector had been assigned to it at its init position, so an
      # unused code keeps its place as both statistics decay (Laplace smoothing aside).
      self.cluster_size = self.variable(EMA_COLLECTION, "cluster_size",
                                        lambda: jnp.ones((self.codebook_size,), jnp.float32))
      self.embed_sum = self.variable(EMA_COLLECTION, "embed_sum",
                                     lambda: self.embedding.value)
      self.updates = self.variable(EMA_COLLECTION, "updates", lambda: jnp.zeros((), jnp.int32))
    else:
      self.embedding = self.param("embedding", _codebook_init, shape)

  def codes(self):
    """The (K, D) codebook as the lookup sees it (unit rows with `l2_normalize`)."""
    codes = self.embedding.value if self.ema else self.embedding
    return _normalise(codes) if self.l2_normalize else codes

  def lookup(self, indices):
    return jnp.take(self.codes(), indices, axis=0)

  def __call__(self, z, train: bool = False) -> dict:
    if self.dead_code_threshold > 0 and not self.ema:
      raise ValueError("dead_code_threshold needs ema=True (a restart rewrites the codebook, "
                       "which the optimiser owns otherwise).")
    if self.l2_normalize:
      z = _normalise(z)
    codes = self.codes()
    indices = nearest_code(z, codes)
    q = jnp.take(codes, indices, axis=0)
    commitment = self.beta * jnp.mean((jax.lax.stop_gradient(q) - z) ** 2)
    codebook = (jnp.zeros((), z.dtype) if self.ema
                else jnp.mean((q - jax.lax.stop_gradient(z)) ** 2))
    stats = codebook_statistics(indices, self.codebook_size)
    if self.ema and train and self.is_mutable_collection(EMA_COLLECTION) \
        and not self.is_initializing():
      self._ema_update(jax.lax.stop_gradient(z), indices, stats["counts"])
    return {"z": z, "z_q": z + jax.lax.stop_gradient(q - z), "indices": indices,
            "commitment_loss": commitment, "codebook_loss": codebook,
            "perplexity": stats["perplexity"], "usage": stats["usage"]}

  def _ema_update(self, z, indices, counts):
    flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    decay = self.ema_decay
    batch_sum = jnp.zeros(self.embed_sum.value.shape, jnp.float32).at[indices.reshape(-1)].add(flat)
    cluster_size = decay * self.cluster_size.value + (1 - decay) * counts
    embed_sum = decay * self.embed_sum.value + (1 - decay) * batch_sum
    if self.dead_code_threshold > 0:
      key = jax.random.fold_in(jax.random.key(0), self.updates.value)
      picks = flat[jax.random.randint(key, (self.codebook_size,), 0, flat.shape[0])]
      dead = cluster_size < self.dead_code_threshold
      cluster_size = jnp.where(dead, 1.0, cluster_size)
      embed_sum = jnp.where(dead[:, None], picks, embed_sum)
    total = cluster_size.sum()
    smoothed = (cluster_size + self.ema_epsilon) / (total + self.codebook_size
                                                    * self.ema_epsilon) * total
    self.cluster_size.value = cluster_size
    self.embed_sum.value = embed_sum
    self.embedding.value = embed_sum / smoothed[:, None]
    self.updates.value = self.updates.value + 1


class VQGAN(nn.Module):
  """Encoder -> quant_conv -> codebook -> post_quant_conv -> decoder; NHWC images in [-1, 1].

  Defaults are Janus/LlamaGen's VQ-16 (16384 codes of dim 8, l2-normalised, factor 16).
  """
  base_channels: int = 128
  channel_multiplier: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  latent_channels: int = 256
  codebook_size: int = 16384
  codebook_dim: int = 8
  beta: float = 0.25
  l2_normalize: bool = True
  ema: bool = False
  ema_decay: float = 0.99
  dead_code_threshold: float = 0.0
  out_channels: int = 3
  num_groups: int = 32
  dtype: Any = jnp.float32

  @property
  def downsampling(self) -> int:
    return 2 ** (len(self.channel_multiplier) - 1)

  def setup(self):
    common = dict(base_channels=self.base_channels,
                  channel_multiplier=tuple(self.channel_multiplier),
                  num_res_blocks=self.num_res_blocks, num_groups=self.num_groups,
                  dtype=self.dtype)
    self.encoder = Encoder(latent_channels=self.latent_channels, **common)
    self.quant_conv = _conv(self.codebook_dim, 1, "quant_conv", self.dtype)
    self.quantize = VectorQuantizer(self.codebook_size, self.codebook_dim, self.beta,
                                    self.l2_normalize, self.ema, self.ema_decay,
                                    dead_code_threshold=self.dead_code_threshold)
    self.post_quant_conv = _conv(self.latent_channels, 1, "post_quant_conv", self.dtype)
    self.decoder = Decoder(out_channels=self.out_channels, **common)

  def encode(self, images, train: bool = False) -> dict:
    """z (after quant_conv; unit-normalised with l2_normalize), z_q, indices, losses, stats."""
    size = images.shape[1:3]
    if size[0] % self.downsampling or size[1] % self.downsampling:
      raise ValueError(f"image size {size} is not a multiple of the downsampling factor "
                       f"{self.downsampling}")
    pre_quant = self.quant_conv(self.encoder(images))
    out = self.quantize(pre_quant.astype(jnp.float32), train=train)
    out["pre_quant"] = pre_quant
    return out

  def decode(self, z_q):
    return self.decoder(self.post_quant_conv(z_q))

  def decode_indices(self, indices):
    return self.decode(self.quantize.lookup(indices))

  def __call__(self, images, train: bool = False) -> dict:
    out = self.encode(images, train=train)
    out["recon"] = self.decode(out["z_q"])
    return out


def _register(name: str, image_size: int, **fields):
  # VQGANs take [-1, 1] images: (x/255 - 0.5) / 0.5.
  registry.register(name, functools.partial(VQGAN, **fields),
                    registry.InputSpec(image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))


_register("vqgan_f16", 256)  # Janus / LlamaGen VQ-16
_register("vqgan_f8", 256, channel_multiplier=(1, 2, 2, 4))  # LlamaGen VQ-8's layout
# For CPU runs and tests: 32 px -> an 8x8 grid of 256 codes.
_register("vqgan_tiny", 32, base_channels=32, channel_multiplier=(1, 1, 2), num_res_blocks=1,
          latent_channels=64, codebook_size=256, codebook_dim=8)
