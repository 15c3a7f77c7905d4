"""A DINOv2-style Vision Transformer that holds every released DINOv2 backbone and our students.

One module, variants as `functools.partial`s. Parameter names follow the official DINOv2 layout
(fused `qkv`, `ls1`/`ls2` LayerScale, `w12`/`w3` SwiGLU), so conversion is mostly renaming.
Outputs use DINOv2's own dict keys, so code written against `forward_features` reads the same.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kt_jax.models import registry
from kt_jax.models.attention import dot_product_attention
from kt_jax.models.interpolate import resample_grid_matrices
from kt_jax.models.layers import (tokens_2d, torch_default_bias_init,
                                  torch_default_kernel_init)

Dtype = Any
_dense_init = nn.initializers.truncated_normal(0.02)


def _gelu(x):
  """PyTorch's nn.GELU: the exact erf form (flax's default is the tanh approximation).

  Written with `erf`, as PyTorch's kernel is, not `jax.nn.gelu(approximate=False)`, which uses
  `erfc`, slower on XLA:CPU: 1.05-1.2 ms against 2.6-4.3 ms per 3.2M fp32 elements on the
  2-core CPU (best of 15 runs, two passes), 94-107 ms against 108-113 ms for a 384-1536-384
  MLP's forward+backward at 2080 tokens.
  """
  return x * 0.5 * (1.0 + jax.lax.erf(x * jnp.asarray(2 ** -0.5, x.dtype)))


def _quick_gelu(x):
  """OpenAI CLIP's x * sigmoid(1.702 x) (transformers' `quick_gelu`)."""
  return x * jax.nn.sigmoid(jnp.asarray(1.702, x.dtype) * x)


# transformers' ACT2FN names -> functions; "gelu" is torch's exact erf form.
ACTIVATIONS = {"gelu": _gelu, "quick_gelu": _quick_gelu, "silu": nn.silu, "swish": nn.silu,
               "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True)}


def rope_tables(grid_hw: tuple[int, int], head_dim: int, theta: float):
  """(cos, sin), each (H*W, head_dim) float32: DINOv3's 2-D rotary embedding of patch centres.

  As transformers' DINOv3ViTRopePositionEmbedding (eval mode): centres in [-1, 1] per axis,
  `head_dim / 4` frequencies per axis, angles laid out (y freqs, x freqs) and tiled twice.
  Static shapes, so computed in NumPy once per input size.
  """
  h, w = grid_hw
  coords = np.stack(np.meshgrid((np.arange(h, dtype=np.float32) + 0.5) / h,
                                (np.arange(w, dtype=np.float32) + 0.5) / w, indexing="ij"),
                    axis=-1).reshape(-1, 2) * np.float32(2) - np.float32(1)
  inv_freq = (1.0 / theta ** np.arange(0, 1, 4 / head_dim, dtype=np.float32)).astype(np.float32)
  angles = (np.float32(2 * np.pi) * coords[:, :, None] * inv_freq[None, None, :]).reshape(
      len(coords), -1)
  angles = np.tile(angles, 2).astype(np.float32)
  return np.cos(angles), np.sin(angles)


def apply_rope(x, cos, sin):
  """Rotates the last `len(cos)` tokens of (B, T, heads, d) `x`; the prefix (class and
  register tokens) passes unrotated, as in DINOv3."""
  prefix, patches = x[:, :x.shape[1] - cos.shape[0]], x[:, x.shape[1] - cos.shape[0]:]
  half = patches.shape[-1] // 2
  rotated = jnp.concatenate([-patches[..., half:], patches[..., :half]], axis=-1)
  cos, sin = cos[None, :, None].astype(x.dtype), sin[None, :, None].astype(x.dtype)
  return jnp.concatenate([prefix, patches * cos + rotated * sin], axis=1)


class LayerScale(nn.Module):
  init_value: float

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],))
    return x * gamma.astype(x.dtype)


class Attention(nn.Module):
  num_heads: int
  qkv_bias: bool = True
  proj_bias: bool = True
  dtype: Dtype = jnp.float32
  implementation: str = "auto"  # see kt_jax.models.attention

  @nn.compact
  def __call__(self, x, rope=None):
    """rope: optional (cos, sin) of `rope_tables`, applied to q and k of the patch tokens."""
    b, t, d = x.shape
    x = x.reshape(b * t, d)  # see layers.tokens_2d
    qkv = nn.Dense(3 * d, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=_dense_init,
                   name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out = dot_product_attention(q, k, v, self.implementation)
    out = nn.Dense(d, use_bias=self.proj_bias, dtype=self.dtype, kernel_init=_dense_init,
                   name="proj")(out.reshape(b * t, d))
    return out.reshape(b, t, d)


class Mlp(nn.Module):
  hidden_dim: int
  bias: bool = True
  dtype: Dtype = jnp.float32
  act: str = "gelu"  # a key of ACTIVATIONS

  @nn.compact
  @tokens_2d
  def __call__(self, x):
    h = ACTIVATIONS[self.act](nn.Dense(self.hidden_dim, use_bias=self.bias, dtype=self.dtype,
                       kernel_init=_dense_init, name="fc1")(x))
    return nn.Dense(x.shape[-1], use_bias=self.bias, dtype=self.dtype, kernel_init=_dense_init,
                    name="fc2")(h)


class SwiGLU(nn.Module):
  """DINOv2's SwiGLUFFNFused: the hidden size is 2/3 of the MLP's, rounded up to 8.

  `round_hidden=False` keeps `hidden_dim` as given and `act` picks the gate's activation:
  DINOv3's gated MLP (`ffn="gated"`), `act(gate) * up`, packed as [gate, up] in `w12`.
  """
  hidden_dim: int
  bias: bool = True
  dtype: Dtype = jnp.float32
  act: str = "silu"
  round_hidden: bool = True

  @nn.compact
  @tokens_2d
  def __call__(self, x):
    hidden = ((int(self.hidden_dim * 2 / 3) + 7) // 8 * 8 if self.round_hidden
              else self.hidden_dim)
    x12 = nn.Dense(2 * hidden, use_bias=self.bias, dtype=self.dtype, kernel_init=_dense_init,
                   name="w12")(x)
    x1, x2 = jnp.split(x12, 2, axis=-1)
    return nn.Dense(x.shape[-1], use_bias=self.bias, dtype=self.dtype, kernel_init=_dense_init,
                    name="w3")(ACTIVATIONS[self.act](x1) * x2)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample, rescaling the survivors."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class Block(nn.Module):
  num_heads: int
  mlp_ratio: float = 4.0
  ffn: str = "mlp"
  layerscale_init: float | None = 1.0
  drop_path: float = 0.0
  qkv_bias: bool = True
  proj_bias: bool = True
  ffn_bias: bool = True
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  attention: str = "auto"
  act: str | None = None  # None: the FFN's own default (gelu; silu for the SwiGLUs)

  @nn.compact
  def __call__(self, x, deterministic: bool = True, rope=None):
    d = x.shape[-1]
    ffn_cls = {"mlp": Mlp, "swiglu": SwiGLU,
               "gated": functools.partial(SwiGLU, round_hidden=False)}[self.ffn]
    if self.act is not None:
      ffn_cls = functools.partial(ffn_cls, act=self.act)
    scale = (lambda name: LayerScale(self.layerscale_init, name=name)
             if self.layerscale_init is not None else (lambda y: y))
    y = nn.LayerNorm(self.norm_eps, dtype=self.dtype, name="norm1")(x)
    y = Attention(self.num_heads, self.qkv_bias, self.proj_bias, self.dtype, self.attention,
                  name="attn")(y, rope)
    x = x + DropPath(self.drop_path)(scale("ls1")(y), deterministic)
    y = nn.LayerNorm(self.norm_eps, dtype=self.dtype, name="norm2")(x)
    y = ffn_cls(int(d * self.mlp_ratio), self.ffn_bias, self.dtype, name="mlp")(y)
    return x + DropPath(self.drop_path)(scale("ls2")(y), deterministic)


class VisionTransformer(nn.Module):
  """DINOv2 ViT. Input: (B, H, W, 3) normalised images, H and W multiples of `patch_size`.

  `pos_grid` is the side of the learned position-embedding grid (37 for DINOv2's 518 px);
  other input sizes resample it bicubically, the way the checkpoint's own code does:
  `pos_interp_offset=0.1` for the official release, 0.0 for transformers and register models,
  `pos_interp_antialias=True` for register models.

  `position_encoding="rope"` drops the learned position embedding for DINOv3's 2-D rotary
  embedding of the patch tokens (`rope_theta`), which needs no resampling at any size.
  """
  patch_size: int = 14
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  ffn: str = "mlp"
  num_register_tokens: int = 0
  layerscale_init: float | None = 1.0
  pos_grid: int = 37
  pos_interp_offset: float = 0.1
  pos_interp_antialias: bool = False
  drop_path_rate: float = 0.0
  qkv_bias: bool = True
  proj_bias: bool = True
  ffn_bias: bool = True
  norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32
  attention: str = "auto"  # "tiled" on CPU, jax.nn.dot_product_attention elsewhere
  act: str | None = None  # the FFN's activation (a key of ACTIVATIONS); None: its default
  position_encoding: str = "learned"  # or "rope" (DINOv3)
  rope_theta: float = 100.0

  def _position_embedding(self, grid_hw: tuple[int, int]) -> jax.Array:
    n = self.pos_grid
    pos = self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                     (1, 1 + n * n, self.embed_dim))
    # The official code skips resampling only when the grid already matches, so must we:
    # with the 0.1 offset, "resampling" to the same size is not the identity.
    if grid_hw == (n, n):
      return pos
    rows, cols = resample_grid_matrices((n, n), grid_hw, self.pos_interp_offset,
                                        self.pos_interp_antialias)
    grid = pos[0, 1:].reshape(n, n, self.embed_dim)
    grid = jnp.einsum("oh,hwd,pw->opd", rows, grid, cols,
                      precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([pos[:, :1], grid.reshape(1, -1, self.embed_dim)], axis=1)

  @nn.compact
  def __call__(self, x, masks=None, *, train: bool = False, return_blocks: int = 0):
    """masks: optional (B, N) bool, True where the patch embedding is replaced by `mask_token`.

    Returns DINOv2's `forward_features` dict, plus `blocks` (the last `return_blocks` block
    outputs, before the final norm) when asked.
    """
    b, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"Input {h}x{w} is not a multiple of the patch size {p}.")
    # The official DINOv2 init (init_weights_vit_timm) touches nn.Linear only: the patch
    # embedding keeps PyTorch's default Conv2d init, and so does ours.
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                kernel_init=torch_default_kernel_init,
                bias_init=torch_default_bias_init(p * p * x.shape[-1]),
                name="patch_embed")(x.astype(self.dtype))
    grid_hw = (h // p, w // p)
    x = x.reshape(b, -1, self.embed_dim)
    mask_token = self.param("mask_token", nn.initializers.zeros, (1, self.embed_dim))
    if masks is not None:
      x = jnp.where(masks[..., None], mask_token.astype(x.dtype)[None], x)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.embed_dim))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, self.embed_dim)), x], 1)
    rope = None
    if self.position_encoding == "rope":
      rope = tuple(jnp.asarray(t) for t in rope_tables(grid_hw, self.embed_dim // self.num_heads,
                                                        self.rope_theta))
    elif self.position_encoding == "learned":
      x = x + self._position_embedding(grid_hw).astype(x.dtype)
    else:
      raise ValueError(f"position_encoding {self.position_encoding!r}: learned or rope")
    r = self.num_register_tokens
    if r:
      reg = self.param("register_tokens", nn.initializers.normal(1e-6), (1, r, self.embed_dim))
      x = jnp.concatenate([x[:, :1], jnp.broadcast_to(reg.astype(x.dtype), (b, r, self.embed_dim)),
                           x[:, 1:]], axis=1)

    rates = [self.drop_path_rate * i / max(self.depth - 1, 1) for i in range(self.depth)]
    block_outputs = []
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, self.ffn, self.layerscale_init, rates[i],
                self.qkv_bias, self.proj_bias, self.ffn_bias, self.norm_eps, self.dtype,
                self.attention, self.act, name=f"blocks_{i}")(x, not train, rope)
      if i >= self.depth - return_blocks:
        block_outputs.append(x)
    x_norm = nn.LayerNorm(self.norm_eps, dtype=self.dtype, name="norm")(x)
    out = {
        "x_norm_clstoken": x_norm[:, 0],
        "x_norm_regtokens": x_norm[:, 1:1 + r],
        "x_norm_patchtokens": x_norm[:, 1 + r:],
        "x_prenorm": x,
    }
    if masks is not None:
      out["masks"] = masks
    if return_blocks:
      out["blocks"] = tuple(block_outputs)
    return out


_SIZES = {  # width, depth, heads (head dim 64 throughout, as in DINOv2)
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "giant": (1536, 40, 24),
}


def _vit(size: str, patch: int, **kwargs) -> Callable[..., VisionTransformer]:
  width, depth, heads = _SIZES[size]
  return functools.partial(VisionTransformer, patch_size=patch, embed_dim=width, depth=depth,
                           num_heads=heads, **kwargs)


def _register_all():
  dinov2_input = registry.InputSpec(image_size=224)
  for size in ("small", "base", "large", "giant"):
    ffn = "swiglu" if size == "giant" else "mlp"
    registry.register(f"vit_{size}_patch14_dinov2",
                      _vit(size, 14, ffn=ffn, pos_grid=37), dinov2_input)
    # Register models (DINOv2 "with registers"): resampled with antialiasing and no offset,
    # as both the official hub models and transformers' Dinov2WithRegistersModel do.
    registry.register(f"vit_{size}_patch14_reg4_dinov2",
                      _vit(size, 14, ffn=ffn, pos_grid=37, num_register_tokens=4,
                           pos_interp_offset=0.0, pos_interp_antialias=True), dinov2_input)
  # Students: DINOv2-style (LayerScale 1.0) so they export to the same formats, with the
  # position grid of a 224 px input.
  for size in ("tiny", "small", "base", "large"):
    for patch in (14, 16, 32):
      registry.register(f"vit_{size}_patch{patch}",
                        _vit(size, patch, pos_grid=224 // patch, pos_interp_offset=0.0),
                        registry.InputSpec(image_size=224 // patch * patch))


_register_all()
