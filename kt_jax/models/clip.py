"""CLIP and SigLIP / SigLIP2 vision towers: one module, the families as fields.

What differs from the DINOv2 ViT (`vit.VisionTransformer`), whose blocks these reuse
(`vit.Block` without LayerScale): CLIP has a LayerNorm before the blocks (`pre_norm`), a patch
embedding without bias, quick-GELU, and a final LayerNorm on the class token with a linear
projection to the joint image-text space; SigLIP has no class token and pools the normed
tokens with an attention-pooling head (a learnt probe attending over them, then an MLP).

Outputs use the ViT's names, so a tower is a teacher like any other:
  x_norm_clstoken     CLIP: post_layernorm(class token) (transformers' `pooler_output`);
                      SigLIP: the attention-pooling head's output (`pooler_output`).
  x_norm_patchtokens  the patch tokens after the final LayerNorm. SigLIP: transformers'
                      `last_hidden_state`. CLIP: transformers returns them before
                      `post_layernorm`; we apply it to every token, as OpenCLIP does.
  x_norm_regtokens    empty (B, 0, D): no registers.
  x_prenorm           the last block's output (CLIP's `last_hidden_state`).
  image_embeds        CLIP: the projection of the pooled output (`CLIPVisionModelWithProjection`),
                      when the checkpoint has one; SigLIP: the pooled output, which is its image
                      embedding (`SiglipModel.get_image_features`).
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kt_jax.models import registry
from kt_jax.models.interpolate import bilinear_antialias_matrix, resample_grid_matrices
from kt_jax.models.vit import Block, Mlp

Dtype = Any
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


class AttentionPoolingHead(nn.Module):
  """SigLIP's `head`: torch.nn.MultiheadAttention of a learnt probe over the tokens, then
  probe + MLP(LayerNorm(probe)). Returns (B, D)."""
  num_heads: int
  mlp_ratio: float
  act: str
  norm_eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    heads, head_dim = self.num_heads, d // self.num_heads
    probe = self.param("probe", nn.initializers.normal(1.0), (1, 1, d)).astype(x.dtype)
    q = nn.Dense(d, dtype=self.dtype, name="q")(probe).reshape(1, 1, heads, head_dim)
    kv = nn.Dense(2 * d, dtype=self.dtype, name="kv")(x.reshape(b * t, d))
    k, v = jnp.split(kv.reshape(b, t, 2, heads, head_dim), 2, axis=2)
    # One query: plain XLA attention (the tiled CPU kernel assumes as many queries as keys).
    out = jax.nn.dot_product_attention(jnp.broadcast_to(q, (b, 1, heads, head_dim)),
                                       k[:, :, 0], v[:, :, 0])
    y = nn.Dense(d, dtype=self.dtype, name="out")(out.reshape(b, d))
    h = nn.LayerNorm(self.norm_eps, dtype=self.dtype, name="norm")(y)
    return y + Mlp(int(d * self.mlp_ratio), True, self.dtype, self.act, name="mlp")(h)


class ContrastiveViT(nn.Module):
  """A CLIP or SigLIP vision tower. Input: (B, H, W, 3) normalised images, H and W multiples
  of `patch_size`; other sizes than `pos_grid * patch_size` resample the position embedding
  as transformers does with `interpolate_pos_encoding=True` (bicubic, by size), or, for
  SigLIP2 (`pos_resample="bilinear_antialias"`), as its NaFlex embedding resizes it."""
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  pos_grid: int = 14
  class_token: bool = True       # CLIP; SigLIP has none
  pre_norm: bool = True          # CLIP's `pre_layrnorm`
  patch_bias: bool = False       # CLIP's patch embedding has no bias, SigLIP's has
  act: str = "quick_gelu"        # SigLIP: gelu_pytorch_tanh
  pool: str = "cls"              # "cls" (CLIP), "map" (SigLIP's attention-pooling head), "mean"
  projection_dim: int = 0        # CLIP's visual_projection (no bias); 0: none
  pos_resample: str = "bicubic"  # or "bilinear_antialias" (SigLIP2)
  norm_eps: float = 1e-5
  dtype: Dtype = jnp.float32
  attention: str = "auto"

  # Proteus: contrastive towers are trained on the image-level embedding only; their patch
  # tokens are no distillation target unless the config says otherwise (proteus.patch_targets).
  patch_objective = False

  @property
  def num_register_tokens(self) -> int:
    return 0

  def _position_embedding(self, grid_hw):
    n, prefix = self.pos_grid, int(self.class_token)
    pos = self.param("pos_embed", nn.initializers.normal(0.02),
                     (1, prefix + n * n, self.embed_dim))
    if grid_hw == (n, n) and self.pos_resample == "bicubic":
      return pos
    if self.pos_resample == "bicubic":
      rows, cols = resample_grid_matrices((n, n), grid_hw, 0.0, False)
    elif self.pos_resample == "bilinear_antialias":
      rows, cols = bilinear_antialias_matrix(n, grid_hw[0]), bilinear_antialias_matrix(n, grid_hw[1])
    else:
      raise ValueError(f"pos_resample {self.pos_resample!r}: bicubic or bilinear_antialias")
    grid = pos[0, prefix:].reshape(n, n, self.embed_dim)
    grid = jnp.einsum("oh,hwd,pw->opd", rows, grid, cols, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([pos[:, :prefix], grid.reshape(1, -1, self.embed_dim)], axis=1)

  @nn.compact
  def __call__(self, x, masks=None, *, train: bool = False, return_blocks: int = 0):
    if masks is not None:
      raise ValueError("A CLIP/SigLIP tower has no mask token: it cannot take `masks`.")
    b, h, w, _ = x.shape
    p, d = self.patch_size, self.embed_dim
    if h % p or w % p:
      raise ValueError(f"Input {h}x{w} is not a multiple of the patch size {p}.")
    x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=self.patch_bias,
                dtype=self.dtype, name="patch_embed")(x.astype(self.dtype))
    x = x.reshape(b, -1, d)
    if self.class_token:
      cls = self.param("cls_token", nn.initializers.normal(d ** -0.5), (1, 1, d))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
    x = x + self._position_embedding((h // p, w // p)).astype(x.dtype)
    if self.pre_norm:
      x = nn.LayerNorm(self.norm_eps, dtype=self.dtype, name="pre_norm")(x)
    block_outputs = []
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, "mlp", None, 0.0, norm_eps=self.norm_eps,
                dtype=self.dtype, attention=self.attention, act=self.act,
                name=f"blocks_{i}")(x)
      if i >= self.depth - return_blocks:
        block_outputs.append(x)
    x_norm = nn.LayerNorm(self.norm_eps, dtype=self.dtype, name="norm")(x)
    prefix = int(self.class_token)
    if self.pool == "cls":
      pooled = x_norm[:, 0]
    elif self.pool == "map":
      pooled = AttentionPoolingHead(self.num_heads, self.mlp_ratio, self.act, self.norm_eps,
                                    self.dtype, name="head")(x_norm)
    elif self.pool == "mean":  # a SigLIP without head (vision_use_head=False): transformers
      pooled = x_norm[:, prefix:].mean(axis=1)  # has no pooled output; we average the tokens
    else:
      raise ValueError(f"pool {self.pool!r}: cls, map or mean")
    out = {"x_norm_clstoken": pooled,
           "x_norm_regtokens": x_norm[:, prefix:prefix],
           "x_norm_patchtokens": x_norm[:, prefix:],
           "x_prenorm": x,
           "image_embeds": pooled}
    if self.projection_dim:
      out["image_embeds"] = nn.Dense(self.projection_dim, use_bias=False, dtype=self.dtype,
                                     name="projection")(pooled)
    if return_blocks:
      out["blocks"] = tuple(block_outputs)
    return out


CLIPVisionTower = ContrastiveViT  # the defaults are CLIP's
SiglipVisionTower = functools.partial(
    ContrastiveViT, class_token=False, pre_norm=False, patch_bias=True, act="gelu_pytorch_tanh",
    pool="map", norm_eps=1e-6)
Siglip2VisionTower = functools.partial(SiglipVisionTower, pos_resample="bilinear_antialias")


def _register_all():
  # Random-weight architectures of the released towers, for benchmarks (`random:<name>`);
  # the weights come from `load_pretrained` of a transformers directory.
  clip_input = registry.InputSpec(224, CLIP_MEAN, CLIP_STD)
  registry.register("clip_vit_base_patch16", functools.partial(
      CLIPVisionTower, pos_grid=14, projection_dim=512), clip_input)
  registry.register("clip_vit_large_patch14", functools.partial(
      CLIPVisionTower, patch_size=14, embed_dim=1024, depth=24, num_heads=16, pos_grid=16,
      projection_dim=768), clip_input)
  siglip_input = registry.InputSpec(224, SIGLIP_MEAN, SIGLIP_STD)
  registry.register("siglip_base_patch16_224", functools.partial(
      SiglipVisionTower, pos_grid=14, mlp_ratio=3072 / 768), siglip_input)
  registry.register("siglip2_base_patch16_224", functools.partial(
      Siglip2VisionTower, pos_grid=14, mlp_ratio=3072 / 768), siglip_input)


_register_all()
