"""DINOv3 ViTs (transformers `dinov3_vit`): `vit.VisionTransformer` with the 2-D rotary
position embedding of the patch tokens (`position_encoding="rope"`), registers, LayerScale and
16-pixel patches; the large ones use a gated MLP (`ffn="gated"`). Variants, not a new module,
so students and teachers share one code path (masks, register outputs, export tables).
"""
import functools

from kt_jax.models import registry
from kt_jax.models.vit import VisionTransformer

DINOv3ViT = functools.partial(
    VisionTransformer, patch_size=16, num_register_tokens=4, position_encoding="rope",
    rope_theta=100.0, pos_grid=14, norm_eps=1e-5, pos_interp_offset=0.0)


def _register_all():
  # Architectures for benchmarks (`random:<name>`), plain-MLP sizes with 64-wide heads; the
  # weights, and the exact architecture of a release, come from its transformers directory.
  for size, (width, depth, heads) in {"small": (384, 12, 6), "base": (768, 12, 12),
                                      "large": (1024, 24, 16)}.items():
    registry.register(f"vit_{size}_patch16_dinov3", functools.partial(
        DINOv3ViT, embed_dim=width, depth=depth, num_heads=heads),
        registry.InputSpec(image_size=224))


_register_all()
