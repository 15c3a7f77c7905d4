"""Params and FLOPs of registry models: params equal the PyTorch reference's count for the
same architecture; FLOPs come from XLA and scale with the pixel count."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kt_jax import models
from kt_jax.models import stats
from kt_jax.models.__main__ import main as models_cli


def _torch_params(model) -> int:
  return sum(p.numel() for p in model.parameters())


def test_resnet18_params_equal_transformers():
  from transformers import ResNetConfig, ResNetForImageClassification
  ref = ResNetForImageClassification(ResNetConfig(
      embedding_size=64, layer_type="basic", depths=[2, 2, 2, 2],
      hidden_sizes=[64, 128, 256, 512], num_labels=1000))
  assert stats.param_count(models.create("resnet18", num_classes=1000), 32) == _torch_params(ref)


def test_mobilenet_v2_params_equal_torchvision_layout():
  from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
  ref = MobileNetV2ForImageClassification(MobileNetV2Config(num_labels=1000, tf_padding=False))
  assert stats.param_count(models.create("mobilenet_v2"), 32) == _torch_params(ref)
  assert _torch_params(ref) == 3_504_872  # torchvision's published count


@pytest.mark.parametrize("name,width", [("mobilevit_v2_050", 0.5), ("mobilevit_v2_100", 1.0)])
def test_mobilevit_v2_params_equal_transformers(name, width):
  from transformers import MobileViTV2Config, MobileViTV2Model
  ref = MobileViTV2Model(MobileViTV2Config(width_multiplier=width))
  assert stats.param_count(models.create(name), 64) == _torch_params(ref)


def test_flops_scale_with_pixels_and_cli_prints_the_table(capsys):
  small = stats.forward_flops(models.create("resnet18"), 64)
  large = stats.forward_flops(models.create("resnet18"), 128)
  # Conv FLOPs grow with output pixels (4x); XLA's count of resnet18's stem and pooling at
  # 64 px (a 2x2 final map) adds a little (measured 4.58).
  assert 3.5 < large / small < 5.0
  assert models_cli(["--list", "--names", "resnet18,mobilevit_v2_050", "--image-size", "64"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0].split() == ["model", "size", "params", "(M)", "GFLOPs"]
  row = out[1].split()
  assert row[:2] == ["resnet18", "64"]
  assert float(row[3]) == pytest.approx(small / 1e9, abs=0.01)
  assert np.isclose(float(row[2]), stats.param_count(models.create("resnet18"), 64) / 1e6,
                    atol=0.01)


def test_sequence_models_are_counted_on_a_sequence_of_indices():
  """The latent transformer takes codebook indices, not images: one full sequence."""
  row = stats.model_stats("latent_transformer_tiny")
  module = models.create("latent_transformer_tiny")
  params = module.init(jax.random.key(0), jnp.zeros((1, module.seq_len), jnp.int32))["params"]
  assert row.params == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  assert row.image_size == 0 and row.flops > 2 * row.params  # at least one MAC per weight
  assert stats.format_table([row]).splitlines()[1].split()[1] == "-"
