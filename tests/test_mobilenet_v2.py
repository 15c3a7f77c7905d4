"""MobileNetV2 port vs a plain-PyTorch copy of torchvision's model and its ImageNet weights.

torchvision is not installable here, so the reference below re-implements
torchvision.models.mobilenet_v2 with its exact module names: `load_state_dict(strict=True)`
of the real .pth checks the structure, and classifying real photos checks the forward.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn

from kt_jax.convert import mobilenet_v2 as convert_mnv2
from kt_jax.convert import strict
from kt_jax.models import mobilenet_v2  # noqa: F401  (registers the model)
from kt_jax.models import registry

CAT_CLASSES = range(281, 286)
ESPRESSO = 967


class TorchConvBNReLU(nn.Sequential):

  def __init__(self, cin, cout, kernel=3, stride=1, groups=1):
    super().__init__(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class TorchInvertedResidual(nn.Module):

  def __init__(self, cin, cout, stride, expand_ratio):
    super().__init__()
    hidden = int(round(cin * expand_ratio))
    self.use_res_connect = stride == 1 and cin == cout
    layers = [TorchConvBNReLU(cin, hidden, kernel=1)] if expand_ratio != 1 else []
    layers += [TorchConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
               nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    self.conv = nn.Sequential(*layers)

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TorchMobileNetV2(nn.Module):
  """torchvision.models.mobilenet_v2(width_mult=1.0), written out."""

  def __init__(self):
    super().__init__()
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
               [6, 160, 3, 2], [6, 320, 1, 1]]
    features, cin = [TorchConvBNReLU(3, 32, stride=2)], 32
    for t, c, n, s in setting:
      for i in range(n):
        features.append(TorchInvertedResidual(cin, c, s if i == 0 else 1, t))
        cin = c
    features.append(TorchConvBNReLU(cin, 1280, kernel=1))
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

  def forward(self, x):
    fm = self.features(x)
    return fm, self.classifier(fm.mean((2, 3)))


def photo(name: str) -> np.ndarray:
  """torchvision's eval transform: central 224/256 of the short side, resized, normalised."""
  spec = registry.input_spec("mobilenet_v2")
  img = getattr(skimage.data, name)()
  h, w = img.shape[:2]
  side = round(min(h, w) * 224 / 256)
  top, left = (h - side) // 2, (w - side) // 2
  img = Image.fromarray(img[top:top + side, left:left + side])
  img = np.asarray(img.resize((spec.image_size,) * 2, Image.BILINEAR), np.float32) / 255
  return ((img - np.array(spec.mean)) / np.array(spec.std)).astype(np.float32)[None]


@pytest.fixture(scope="module")
def state_dict():
  return strict.load_torch_file(convert_mnv2.shipped_path())


@pytest.fixture(scope="module")
def flax_model(state_dict):
  module, variables = convert_mnv2.convert(state_dict, "mobilenet_v2")
  return module, variables, jax.jit(module.apply)


@pytest.fixture(scope="module")
def torch_model(state_dict):
  model = TorchMobileNetV2()
  model.load_state_dict(state_dict, strict=True)
  return model.eval()


def torch_outputs(model, x: np.ndarray) -> dict:
  with torch.no_grad():
    fm, logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  fm = fm.numpy().transpose(0, 2, 3, 1)
  return {"feature_map": fm, "x_norm_clstoken": fm.mean((1, 2)), "logits": logits.numpy()}


def assert_close(ours: dict, ref: dict):
  diffs = {k: float(np.abs(np.asarray(ours[k]) - v).max() / np.abs(v).max())
           for k, v in ref.items()}
  assert all(d < 1e-4 for d in diffs.values()), diffs


def test_matches_reference_and_classifies_photos(flax_model, torch_model):
  _, variables, apply = flax_model
  x = np.concatenate([np.random.RandomState(0).randn(1, 224, 224, 3).astype(np.float32),
                      photo("chelsea"), photo("coffee")])
  ours, ref = apply(variables, x), torch_outputs(torch_model, x)
  assert_close(ours, ref)
  # The reference itself must be right: the real weights recognise real photos.
  for logits in (ours["logits"], ref["logits"]):
    top1 = np.asarray(jnp.argmax(logits, -1))
    assert top1[1] in CAT_CLASSES, top1
    assert top1[2] == ESPRESSO, top1


def test_non_square_input(flax_model, torch_model):
  _, variables, apply = flax_model
  x = np.random.RandomState(1).randn(1, 96, 160, 3).astype(np.float32)
  out = apply(variables, x)
  b, h, w, c = out["feature_map"].shape
  assert (h, w, c) == (3, 5, 1280)
  assert out["x_norm_patchtokens"].shape == (b, h * w, c)
  np.testing.assert_array_equal(out["x_norm_patchtokens"][:, w + 1],
                                out["feature_map"][:, 1, 1])  # Row-major flattening.
  assert_close(out, torch_outputs(torch_model, x))


def test_mismatched_checkpoint_names_every_bad_key(state_dict):
  state = dict(state_dict)
  del state["features.4.conv.1.1.running_mean"]
  state["features.7.conv.2.wieght"] = state.pop("features.7.conv.2.weight")
  state["features.18.0.weight"] = state["features.18.0.weight"][:640]
  with pytest.raises(strict.CheckpointMismatchError) as info:
    convert_mnv2.convert(state, "mobilenet_v2")
  message = str(info.value)
  for key in ("features.4.conv.1.1.running_mean", "features.7.conv.2.weight",
              "features.7.conv.2.wieght", "features.18.0.weight"):
    assert key in message, message


def test_matches_only_torchvision_mobilenet_v2(state_dict):
  assert convert_mnv2.matches(state_dict)
  assert not convert_mnv2.matches(["_conv_stem.weight", "_blocks.0._depthwise_conv.weight"])
  v3_like = [k for k in state_dict if not k.startswith(("features.18.", "classifier.1."))]
  assert not convert_mnv2.matches(v3_like)


def test_registry_input_spec():
  spec = registry.input_spec("mobilenet_v2")
  assert (spec.image_size, spec.mean, spec.std) == (
      224, registry.IMAGENET_MEAN, registry.IMAGENET_STD)


def _transformers_name(torchvision_key: str) -> str | None:
  """torchvision's MobileNetV2 state-dict key -> transformers' MobileNetV2Model key."""
  parts = torchvision_key.split(".")
  if parts[0] != "features":
    return None
  index, rest = int(parts[1]), parts[2:]
  norm = {"weight": "weight", "bias": "bias", "running_mean": "running_mean",
          "running_var": "running_var", "num_batches_tracked": "num_batches_tracked"}
  if index == 0:
    return f"conv_stem.first_conv.{'convolution' if rest[0] == '0' else 'normalization'}." + rest[1]
  if index == 18:
    return f"conv_1x1.{'convolution' if rest[0] == '0' else 'normalization'}." + rest[1]
  if index == 1:  # expand ratio 1: conv.0 = depthwise ConvBNReLU, conv.1 / conv.2 = project
    layer = {"0": "conv_3x3", "1": "reduce_1x1", "2": "reduce_1x1"}[rest[1]]
    kind = ("convolution" if rest[1] == "1" or (rest[1] == "0" and rest[2] == "0")
            else "normalization")
    return f"conv_stem.{layer}.{kind}.{norm[rest[-1]]}"
  layer = {"0": "expand_1x1", "1": "conv_3x3", "2": "reduce_1x1", "3": "reduce_1x1"}[rest[1]]
  kind = ("convolution" if rest[1] == "2" or (rest[1] in "01" and rest[2] == "0")
          else "normalization")
  return f"layer.{index - 2}.{layer}.{kind}.{norm[rest[-1]]}"


@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_matches_transformers_dilated_mobilenet_v2(state_dict, output_stride):
  """`output_stride` against transformers' MobileNetV2Model(output_stride=...) (the DeepLabV3
  backbone rule, an independent implementation), both holding the shipped ImageNet weights:
  same feature map at 1/output_stride of the input."""
  from transformers import MobileNetV2Config, MobileNetV2Model
  reference = MobileNetV2Model(MobileNetV2Config(output_stride=output_stride, tf_padding=False,
                                                 layer_norm_eps=1e-5),
                               add_pooling_layer=False).eval()
  mapped = {_transformers_name(k): v for k, v in state_dict.items()}
  mapped.pop(None, None)
  missing, unexpected = reference.load_state_dict(mapped, strict=False)
  assert not missing and not unexpected, (missing, unexpected)
  module, variables = convert_mnv2.convert(state_dict, "mobilenet_v2")
  x = np.random.RandomState(0).randn(2, 64, 48, 3).astype(np.float32)
  ours = module.clone(output_stride=output_stride).apply(variables, jnp.asarray(x))
  with torch.no_grad():
    theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).last_hidden_state
  theirs = theirs.permute(0, 2, 3, 1).numpy()
  assert ours["feature_map"].shape == (2, 64 // output_stride, 48 // output_stride, 1280)
  np.testing.assert_allclose(ours["feature_map"], theirs, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
    module.clone(output_stride=4).apply(variables, jnp.asarray(x))


def test_pyramid_maps_match_torchvision_stage_outputs(flax_model, torch_model):
  """`stride_<s>`: the last block's output at each stride, what a segmentation decoder's skip
  connection reads; torchvision's features[3], [6], [13], [17] are the last blocks at strides
  4, 8, 16 and 32 (before the final 1x1 conv)."""
  _, variables, apply = flax_model
  x = np.random.RandomState(2).randn(1, 64, 96, 3).astype(np.float32)
  ours = apply(variables, x)
  with torch.no_grad():
    h, maps = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), {}
    for i, layer in enumerate(torch_model.features):
      h = layer(h)
      maps[i] = h.permute(0, 2, 3, 1).numpy()
  for stride, index in ((4, 3), (8, 6), (16, 13), (32, 17)):
    got = np.asarray(ours[f"stride_{stride}"])
    assert got.shape == (1, 64 // stride, 96 // stride, maps[index].shape[-1])
    np.testing.assert_allclose(got, maps[index], rtol=1e-4, atol=1e-4)
