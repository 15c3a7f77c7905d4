"""EfficientNet-Lite port vs the real `efficientnet_lite_pytorch` code and shipped weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from kt_jax.convert import efficientnet_lite as convert_lite
from kt_jax.convert import strict
from kt_jax.models import efficientnet_lite  # noqa: F401  (registers the variants)
from kt_jax.models import registry

CAT_CLASSES = range(281, 286)
ESPRESSO = 967


def photo(name: str, variant: str) -> np.ndarray:
  """TF-style eval crop (central size/(size+32) of the short side, bicubic), normalised."""
  spec = registry.input_spec(variant)
  img = getattr(skimage.data, name)()
  h, w = img.shape[:2]
  side = round(min(h, w) * spec.image_size / (spec.image_size + 32))
  top, left = (h - side) // 2, (w - side) // 2
  img = Image.fromarray(img[top:top + side, left:left + side])
  img = np.asarray(img.resize((spec.image_size,) * 2, Image.BICUBIC), np.float32) / 255
  return ((img - np.array(spec.mean)) / np.array(spec.std)).astype(np.float32)[None]


def torch_reference(variant: str, dynamic_padding: bool = False):
  """The package's own model with the shipped weights; dynamic padding for any input size."""
  name = variant.replace("_", "-")
  overrides = {"image_size": None} if dynamic_padding else {}
  model = EfficientNet.from_name(name, **overrides)
  model.load_state_dict(torch.load(convert_lite.shipped_path(variant), weights_only=True))
  return model.eval()


def torch_outputs(model, x: np.ndarray) -> dict:
  with torch.no_grad():
    fm = model.extract_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  fm = fm.numpy().transpose(0, 2, 3, 1)
  return {"feature_map": fm, "x_norm_clstoken": fm.mean((1, 2)), "logits": logits.numpy()}


def max_rel_diff(ours: dict, ref: dict) -> dict:
  return {k: float(np.abs(np.asarray(ours[k]) - v).max() / np.abs(v).max())
          for k, v in ref.items()}


@pytest.fixture(scope="module")
def lite0():
  return convert_lite.load_shipped("efficientnet_lite0")


def compare(variant: str, size: int, loaded=None) -> tuple[dict, dict]:
  """Flax and PyTorch outputs for [noise, chelsea, coffee] at the variant's resolution."""
  module, variables = loaded or convert_lite.load_shipped(variant)
  x = np.concatenate([np.random.RandomState(0).randn(1, size, size, 3).astype(np.float32),
                      photo("chelsea", variant), photo("coffee", variant)])
  return jax.jit(module.apply)(variables, x), torch_outputs(torch_reference(variant), x)


@pytest.fixture(scope="module")
def lite0_outputs(lite0):
  return compare("efficientnet_lite0", 224, lite0)


def check(ours: dict, ref: dict):
  diffs = max_rel_diff(ours, ref)
  assert all(d < 1e-4 for d in diffs.values()), diffs
  top1 = np.asarray(jnp.argmax(ours["logits"], -1))
  assert top1[1] in CAT_CLASSES, top1
  assert top1[2] == ESPRESSO, top1


def test_lite0_matches_pytorch_reference_and_classifies_photos(lite0_outputs):
  check(*lite0_outputs)


@pytest.mark.slow
@pytest.mark.parametrize("variant,size", [("efficientnet_lite1", 240),
                                          ("efficientnet_lite2", 260)])
def test_lite1_lite2_match_pytorch_reference_and_classify_photos(variant, size):
  check(*compare(variant, size))


def test_non_square_input_matches_dynamic_padding_reference(lite0):
  module, variables = lite0
  x = np.random.RandomState(1).randn(1, 100, 164, 3).astype(np.float32)
  out = jax.jit(module.apply)(variables, x)
  b, h, w, c = out["feature_map"].shape
  assert (h, w) == (4, 6)  # ceil(100 / 32), ceil(164 / 32): TF "same" rounds up.
  assert out["x_norm_patchtokens"].shape == (b, h * w, c)
  np.testing.assert_array_equal(out["x_norm_patchtokens"][:, w + 1],
                                out["feature_map"][:, 1, 1])  # Row-major flattening.
  ref = torch_outputs(torch_reference("efficientnet_lite0", dynamic_padding=True), x)
  diffs = max_rel_diff(out, ref)
  assert all(d < 1e-4 for d in diffs.values()), diffs


def test_mismatched_checkpoint_names_every_bad_key():
  state = dict(torch.load(convert_lite.shipped_path("efficientnet_lite0"), weights_only=True))
  del state["_blocks.3._bn1.running_var"]
  state["_blocks.5._expand_konv.weight"] = state.pop("_blocks.5._expand_conv.weight")
  state["_fc.weight"] = state["_fc.weight"][:10]
  assert convert_lite.matches(state)
  with pytest.raises(strict.CheckpointMismatchError) as info:
    convert_lite.convert(state, "efficientnet_lite0")
  message = str(info.value)
  for key in ("_blocks.3._bn1.running_var", "_blocks.5._expand_conv.weight",
              "_blocks.5._expand_konv.weight", "_fc.weight"):
    assert key in message, message


def test_matches_only_the_lite_layout():
  lite = strict.load_torch_file(convert_lite.shipped_path("efficientnet_lite0")).keys()
  assert convert_lite.matches(lite)
  assert not convert_lite.matches(list(lite) + ["_blocks.0._se_reduce.weight"])
  assert not convert_lite.matches(["features.0.0.weight", "classifier.1.weight"])


def test_registry_input_specs():
  sizes = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
  for name, size in sizes.items():
    spec = registry.input_spec(name)
    assert spec.image_size == size
    np.testing.assert_allclose(spec.mean, [127 / 255] * 3)
    np.testing.assert_allclose(spec.std, [128 / 255] * 3)


def test_bn_momentum_sets_the_running_statistics_decay():
  """One training step moves the stem BatchNorm's running mean to m * old + (1 - m) * batch
  mean (NumPy, from the stem convolution's own output); 0.99 stays the default."""
  assert registry.create("efficientnet_lite0").bn_momentum == 0.99
  momentum = 0.9
  model = registry.create("efficientnet_lite0", num_classes=0, bn_momentum=momentum)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  variables = jax.tree.map(lambda s: jnp.asarray(
      np.random.default_rng(1).normal(size=s.shape) * 0.1, s.dtype), variables)
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(2)})
  stem = jax.lax.conv_general_dilated(
      x, variables["params"]["conv_stem"]["kernel"], (2, 2), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  old = np.asarray(variables["batch_stats"]["bn0"]["mean"])
  want = momentum * old + (1 - momentum) * np.asarray(stem).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(updates["batch_stats"]["bn0"]["mean"], want, rtol=1e-4, atol=1e-5)


def _dilated_reference(model, output_stride: int):
  """The package's own model (dynamic SAME padding, which pads for a conv's dilation) with
  DeepLab's output-stride rule applied to its depthwise convs: after the stem (stride 2) and
  blocks reach `output_stride`, a block's depthwise conv runs at stride 1 with the current
  dilation, and later blocks dilate by its stride."""
  current, dilation = 2, 1
  for block in model._blocks:  # pylint: disable=protected-access
    conv = block._depthwise_conv  # pylint: disable=protected-access
    stride = conv.stride[0]
    if current == output_stride:
      conv.stride, conv.dilation = [1, 1], (dilation, dilation)
      dilation *= stride
    else:
      current *= stride
  return model


@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_matches_the_dilated_reference(lite0, output_stride):
  """`output_stride` 16 / 8: the same shipped weights on a 2x / 4x finer final map, equal to
  efficientnet_lite_pytorch's lite0 with its depthwise convs dilated by the same rule."""
  module, variables = lite0
  x = np.random.RandomState(0).randn(2, 64, 48, 3).astype(np.float32)
  ours = jax.jit(module.clone(output_stride=output_stride).apply)(variables, x)
  reference = _dilated_reference(torch_reference("efficientnet_lite0", dynamic_padding=True),
                                 output_stride)
  ref = torch_outputs(reference, x)
  assert ours["feature_map"].shape == (2, 64 // output_stride, 48 // output_stride, 1280)
  diffs = max_rel_diff(ours, ref)
  assert all(d < 1e-4 for d in diffs.values()), diffs


def test_pyramid_maps_match_the_reference_blocks(lite0):
  """`stride_<s>`: the output of the last block at each stride (a segmentation decoder's skip
  input), equal to the package's own blocks' outputs, captured with forward hooks."""
  module, variables = lite0
  x = np.random.RandomState(3).randn(1, 64, 96, 3).astype(np.float32)
  ours = jax.jit(module.apply)(variables, x)
  reference = torch_reference("efficientnet_lite0", dynamic_padding=True)
  captured, current = {}, 2
  for block in reference._blocks:  # pylint: disable=protected-access
    current *= block._depthwise_conv.stride[0]  # pylint: disable=protected-access
    block.register_forward_hook(
        lambda _m, _i, out, s=current: captured.__setitem__(s, out.permute(0, 2, 3, 1).numpy()))
  torch_outputs(reference, x)
  assert sorted(captured) == [2, 4, 8, 16, 32]
  for stride, want in captured.items():
    got = np.asarray(ours[f"stride_{stride}"])
    assert got.shape == want.shape == (1, 64 // stride, 96 // stride, want.shape[-1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
