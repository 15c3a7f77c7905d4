"""The Flax ResNet against transformers' ResNetModel with random weights and random BN stats."""
import re

import jax
import numpy as np
import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, ResNetModel

from kt_jax.convert import resnet as convert_resnet
from kt_jax.convert.strict import CheckpointMismatchError

VARIANTS = {
    "resnet18": dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512]),
    "resnet50": dict(layer_type="bottleneck", depths=[3, 4, 6, 3],
                     hidden_sizes=[256, 512, 1024, 2048]),
}
IMAGE_SIZE = 64


def _config(variant, **overrides):
  # torchvision v1.5: no stride in stage 1 (the max-pool already halves), stride on the 3x3.
  kwargs = dict(embedding_size=64, hidden_act="relu", downsample_in_first_stage=False,
                downsample_in_bottleneck=False, **VARIANTS[variant])
  kwargs.update(overrides)
  return ResNetConfig(**kwargs)


def _randomise_batchnorm(model, seed):
  """Non-trivial running stats and affine params, so a swapped mean/var or scale/bias shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=gen)
        m.bias.normal_(0.0, 0.2, generator=gen)
        m.running_mean.normal_(0.0, 0.2, generator=gen)
        m.running_var.uniform_(0.5, 2.0, generator=gen)
  return model


def _build(model_cls, config, seed=0):
  torch.manual_seed(seed)
  return _randomise_batchnorm(model_cls(config), seed).eval()


def _images(seed=0, batch=2):
  return np.random.default_rng(seed).normal(size=(batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(
      np.float32)


def _torch_nchw(images):
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def _assert_close(name, ours, ref):
  diff = float(np.max(np.abs(np.asarray(ours) - ref)))
  scale = float(np.max(np.abs(ref)))
  print(f"{name}: max abs diff {diff:.3g} (reference max {scale:.3g})")
  assert ours.shape == ref.shape
  assert diff <= 5e-5 * max(scale, 1.0), f"{name}: max abs diff {diff}"


def _apply(module, variables, images, **kwargs):
  return jax.jit(lambda v, x: module.apply(v, x, **kwargs))(variables, images)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def hf_run(request):
  """ResNet-18 runs as ResNetForImageClassification (prefixed keys and a head), ResNet-50 bare."""
  variant = request.param
  if variant == "resnet18":
    model = _build(ResNetForImageClassification, _config(variant, num_labels=5))
    backbone = model.resnet
  else:
    model = backbone = _build(ResNetModel, _config(variant))
  images = _images()
  with torch.no_grad():
    ref = backbone(_torch_nchw(images))
    logits = model.classifier(ref.pooler_output).numpy() if model is not backbone else None
  module, variables = convert_resnet.convert(model.state_dict(), variant)
  ours = jax.tree.map(np.asarray, _apply(module, variables, images))
  return dict(variant=variant, model=model, backbone=backbone, images=images, ref=ref,
              logits=logits, module=module, ours=ours, variables=variables)


def _strides(conv_layer):
  return tuple(conv_layer.convolution.stride)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_huggingface_config_is_torchvision_v15(variant):
  model = ResNetModel(_config(variant))
  stem = model.embedder.embedder.convolution
  assert (stem.kernel_size, stem.stride, stem.padding) == ((7, 7), (2, 2), (3, 3))
  pool = model.embedder.pooler
  assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
  for s, stage in enumerate(model.encoder.stages):
    first = stage.layers[0]
    stride = (1, 1) if s == 0 else (2, 2)
    convs = [_strides(c) for c in first.layer]
    if variant == "resnet50":  # v1.5: 1x1 reduce unstrided, 3x3 strided, 1x1 expand.
      assert convs == [(1, 1), stride, (1, 1)]
    else:
      assert convs == [stride, (1, 1)]
    if s > 0 or variant == "resnet50":
      assert _strides(first.shortcut) == stride
    assert all(_strides(c) == (1, 1) for block in stage.layers[1:] for c in block.layer)


def test_features_match_huggingface(hf_run):
  ref, ours, name = hf_run["ref"], hf_run["ours"], hf_run["variant"]
  _assert_close(f"{name} pooled", ours["x_norm_clstoken"],
                ref.pooler_output.numpy()[:, :, 0, 0])
  feature_map = ref.last_hidden_state.numpy().transpose(0, 2, 3, 1)
  _assert_close(f"{name} feature map", ours["feature_map"], feature_map)
  b, h, w, c = feature_map.shape
  assert (h, w) == (IMAGE_SIZE // 32, IMAGE_SIZE // 32)
  np.testing.assert_array_equal(ours["x_norm_patchtokens"], ours["feature_map"].reshape(b, h * w, c))


def test_checks_bottleneck_stride_placement(hf_run):
  """The same weights under v1 stride placement give other features: the comparison can fail."""
  if hf_run["variant"] != "resnet50":
    pytest.skip("only bottlenecks place the stride")
  v1 = ResNetModel(_config("resnet50", downsample_in_bottleneck=True)).eval()
  v1.load_state_dict(hf_run["model"].state_dict())
  with torch.no_grad():
    other = v1(_torch_nchw(hf_run["images"][:1])).pooler_output.numpy()[:, :, 0, 0]
  ours = hf_run["ours"]["x_norm_clstoken"][:1]
  assert np.max(np.abs(ours - other)) > 1e-2 * np.max(np.abs(other))


def test_logits_match_classification_head(hf_run):
  if hf_run["logits"] is None:
    assert hf_run["module"].num_classes == 0 and "logits" not in hf_run["ours"]
    return
  assert hf_run["module"].num_classes == hf_run["logits"].shape[1]
  _assert_close(f"{hf_run['variant']} logits", hf_run["ours"]["logits"], hf_run["logits"])


# Hugging Face -> torchvision key names, written out independently of the converter.
_TO_TORCHVISION = [
    (r"^resnet\.", ""),
    (r"^classifier\.1\.", "fc."),
    (r"^embedder\.embedder\.convolution\.", "conv1."),
    (r"^embedder\.embedder\.normalization\.", "bn1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.", "L\\1.\\2.downsample.0."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.", "L\\1.\\2.downsample.1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.", "L\\1.\\2.conv\\3."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.", "L\\1.\\2.bn\\3."),
]


def _torchvision_key(key):
  for pattern, repl in _TO_TORCHVISION:
    key = re.sub(pattern, repl, key)
  # Stages and convs count from 1 in torchvision: L0.1.conv0 -> layer1.1.conv1.
  key = re.sub(r"^L(\d+)", lambda m: f"layer{int(m.group(1)) + 1}", key)
  return re.sub(r"\.(conv|bn)(\d)\.", lambda m: f".{m.group(1)}{int(m.group(2)) + 1}.", key)


def test_torchvision_layout_gives_the_same_variables(hf_run):
  """Same tensors under torchvision names must land on the leaves verified above."""
  state = {_torchvision_key(k): v for k, v in hf_run["model"].state_dict().items()}
  assert "layer1.0.conv1.weight" in state and "layer4.1.bn2.running_var" in state
  assert convert_resnet.matches_torchvision(state) and not convert_resnet.matches_huggingface(state)
  assert convert_resnet.matches(state)
  module, variables = convert_resnet.convert(state, hf_run["variant"])
  assert module == hf_run["module"]
  jax.tree.map(np.testing.assert_array_equal, variables, hf_run["variables"])


def test_train_mode_matches_torch_batch_statistics():
  # One block per stage keeps the compile short; the BatchNorm train path is the same.
  model = _build(ResNetModel, _config("resnet18", depths=[1, 1, 1, 1]), seed=2).train()
  module, variables = convert_resnet.convert(model.state_dict(), "resnet18",
                                             stage_sizes=(1, 1, 1, 1))
  images = _images(seed=2)
  with torch.no_grad():
    ref = model(_torch_nchw(images)).pooler_output.numpy()[:, :, 0, 0]
  ours, updates = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, images)
  _assert_close("resnet18 train-mode pooled", np.asarray(ours["x_norm_clstoken"]), ref)
  # torch momentum 0.1 == Flax momentum 0.9 on the running mean.
  np.testing.assert_allclose(updates["batch_stats"]["bn1"]["mean"],
                             model.embedder.embedder.normalization.running_mean.numpy(),
                             rtol=1e-5, atol=1e-6)


def test_mismatched_checkpoint_lists_every_bad_key(hf_run):
  if hf_run["variant"] != "resnet50":
    pytest.skip("one variant is enough")
  state = dict(hf_run["model"].state_dict())
  del state["encoder.stages.1.layers.0.shortcut.normalization.running_var"]
  state["encoder.stages.0.layers.0.extra.weight"] = torch.zeros(3)
  state["encoder.stages.2.layers.1.layer.0.convolution.weight"] = torch.zeros(256, 1024, 3, 3)
  with pytest.raises(CheckpointMismatchError) as err:
    convert_resnet.convert(state, "resnet50")
  message = str(err.value)
  assert "missing in checkpoint: encoder.stages.1.layers.0.shortcut.normalization.running_var" in (
      message)
  assert "unexpected in checkpoint: encoder.stages.0.layers.0.extra.weight" in message
  assert ("shape mismatch: params/layer3_1/conv1/kernel (checkpoint (3, 3, 1024, 256) vs model "
          "(1, 1, 1024, 256))") in message


def test_wrong_variant_raises(hf_run):
  if hf_run["variant"] != "resnet18":
    pytest.skip("one variant is enough")
  with pytest.raises(CheckpointMismatchError, match="missing in checkpoint"):
    convert_resnet.convert(hf_run["model"].state_dict(), "resnet50")


def test_unknown_layout_raises():
  assert not convert_resnet.matches(["blocks.0.attn.qkv.weight"])
  with pytest.raises(CheckpointMismatchError, match="Not a ResNet"):
    convert_resnet.convert({"blocks.0.attn.qkv.weight": np.zeros(3)}, "resnet18")
