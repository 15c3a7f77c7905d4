"""Flax backbones that return dicts of named features, and the registry naming them.

Every backbone maps NHWC normalised float images to a dict with at least
`x_norm_clstoken` (B, D), the global feature, and `x_norm_patchtokens` (B, N, D), the final
token grid in row-major order (DINOv2's names, used for CNNs too).
"""
from kt_jax.models.registry import (IMAGENET_MEAN, IMAGENET_STD, InputSpec, create,
                                    input_spec, input_spec_or_default, names, register)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "InputSpec", "create", "input_spec",
           "input_spec_or_default", "names", "register"]

# Importing the model modules registers their variants.
from kt_jax.models import (clip, dinov3, efficientnet_lite,  # noqa: E402,F401
                           latent_transformer, mobilenet_v2, mobilevit_v2, resnet, vit, vqgan)
