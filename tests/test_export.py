"""Students out to PyTorch: `python -m kt_jax.convert export` for every family, reloaded the way
a PyTorch user would (transformers' AutoModel classes offline, efficientnet_lite_pytorch,
onnxruntime) and compared with the Flax logits; and BatchNorm's variance convention."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kt_jax.convert import export, kt_format
from kt_jax.convert.__main__ import main as convert_cli
from kt_jax.models.classifier import Classifier
from kt_jax.models.efficientnet_lite import EfficientNetLite
from kt_jax.models.mobilenet_v2 import MobileNetV2
from kt_jax.models.mobilevit_v2 import MobileViTV2
from kt_jax.models.resnet import ResNet
from kt_jax.models.vit import VisionTransformer

TOL = 1e-4


def tiny(family):
  """(module, image size): small members of each family, some with a Classifier head (what
  task distillation trains), some with the backbone's own head (an imported model)."""
  if family == "resnet":
    return Classifier(ResNet(stage_sizes=(1, 1, 1, 1), block="basic", width=8), 3), 64
  if family == "resnet_bottleneck":
    return ResNet(stage_sizes=(1, 1, 1, 1), block="bottleneck", width=8, num_classes=4), 64
  if family == "mobilenet_v2":
    return Classifier(MobileNetV2(width_multiplier=0.5, num_classes=0), 3), 64
  if family == "mobilenet_v2_own_head":
    return MobileNetV2(width_multiplier=0.5, num_classes=4), 64
  if family == "mobilevit_v2":
    return Classifier(MobileViTV2(width_multiplier=0.5, n_attn_blocks=(1, 1, 1),
                                  base_attn_unit_dims=(32, 48, 64)), 3), 64
  if family == "vit":  # no LayerScale, no biases: exported as LayerScale 1 and zero biases
    return Classifier(VisionTransformer(patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                        layerscale_init=None, pos_grid=4, proj_bias=False), 3), 32
  if family == "vit_reg":
    return Classifier(VisionTransformer(patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                        num_register_tokens=2, pos_grid=4), 3), 32
  if family == "efficientnet_lite":
    return Classifier(EfficientNetLite(num_classes=0), 3), 64
  raise ValueError(family)


HF_FAMILIES = ["resnet", "resnet_bottleneck", "mobilenet_v2", "mobilenet_v2_own_head",
               "mobilevit_v2", "vit", "vit_reg"]


def random_variables(module, size, seed=0):
  """Init, then non-trivial BatchNorm statistics and affine params, biases and heads."""
  variables = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    names = [getattr(k, "key", "") for k in path]
    x = np.asarray(x)
    if names[-1] == "mean":
      return rng.normal(0.0, 0.2, x.shape).astype(np.float32)
    if names[-1] == "var":
      return rng.uniform(0.5, 2.0, x.shape).astype(np.float32)
    if names[-1] == "scale":
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    if names[-1] == "bias" or names[-2] == "head":
      return rng.normal(0.0, 0.1, x.shape).astype(np.float32)
    return x

  return jax.tree_util.tree_map_with_path(perturb, jax.tree.map(np.asarray, variables))


def images(size, seed=0, batch=2):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def nchw(x):
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def flax_logits(module, variables, x):
  return np.asarray(jax.jit(module.apply)(variables, x)["logits"])


def assert_close(name, ours, ref):
  diff = float(np.max(np.abs(np.asarray(ours) - np.asarray(ref))))
  scale = max(float(np.max(np.abs(ref))), 1.0)
  print(f"{name}: max abs diff {diff:.3g} (logits max {scale:.3g})")
  assert np.shape(ours) == np.shape(ref)
  assert diff <= TOL * scale, f"{name}: {diff}"


def saved_model(tmp_path, family, seed=0):
  module, size = tiny(family)
  variables = random_variables(module, size, seed)
  src = tmp_path / "kt"
  kt_format.save(str(src), module, variables,
                 extra={"input_spec": {"image_size": size, "mean": [0.5] * 3, "std": [0.5] * 3}})
  return module, variables, size, src


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_hf_export_reloads_with_the_same_logits(tmp_path, family):
  import transformers
  module, variables, size, src = saved_model(tmp_path, family)
  assert convert_cli(["export", "--src", str(src), "--out", str(tmp_path / "hf"),
                      "--format", "hf"]) == 0
  model = transformers.AutoModelForImageClassification.from_pretrained(
      tmp_path / "hf", local_files_only=True).eval()
  x = images(size)
  with torch.no_grad():
    ref = model(nchw(x)).logits.numpy()
  assert_close(f"{family} hf", flax_logits(module, variables, x), ref)


def test_efficientnet_lite_export_loads_into_the_reference(tmp_path):
  from efficientnet_lite_pytorch import EfficientNet
  module, variables, size, src = saved_model(tmp_path, "efficientnet_lite")
  out = tmp_path / "lite.pth"
  assert convert_cli(["export", "--src", str(src), "--out", str(out),
                      "--format", "efficientnet_lite"]) == 0
  model = EfficientNet.from_name("efficientnet-lite0", num_classes=3)
  model.load_state_dict(torch.load(out, weights_only=True), strict=True)
  x = images(size)
  with torch.no_grad():
    ref = model.eval()(nchw(x)).numpy()
  assert_close("efficientnet_lite", flax_logits(module, variables, x), ref)
  with pytest.raises(SystemExit) as exit_info:  # no transformers family: one clear error
    convert_cli(["export", "--src", str(src), "--out", str(tmp_path / "hf"), "--format", "hf"])
  assert exit_info.value.code == 2


def _onnx_matches(tmp_path, family):
  import onnxruntime
  module, variables, size, src = saved_model(tmp_path, family)
  out = tmp_path / "model.onnx"
  assert convert_cli(["export", "--src", str(src), "--out", str(out), "--format", "onnx"]) == 0
  session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
  x = images(size, batch=3)  # another batch size than the traced one: the axis is dynamic
  (ref,) = session.run(["logits"], {"pixel_values": x.transpose(0, 3, 1, 2).copy()})
  assert_close(f"{family} onnx", flax_logits(module, variables, x), ref)


def test_onnx_export_matches_flax(tmp_path):
  _onnx_matches(tmp_path, "mobilevit_v2")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["resnet", "mobilenet_v2", "vit", "efficientnet_lite"])
def test_onnx_export_matches_flax_every_family(tmp_path, family):
  _onnx_matches(tmp_path, family)


def test_batchnorm_variance_convention():
  """Flax folds the biased batch variance into its running average, torch the unbiased one;
  export copies the running variance unchanged, so eval outputs agree."""
  x = np.random.default_rng(0).normal(size=(4, 3, 3, 5)).astype(np.float32) * 2.0 + 1.0
  bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  variables = bn.init(jax.random.key(0), x)
  _, updates = bn.apply(variables, x, mutable=["batch_stats"])
  flax_var = np.asarray(updates["batch_stats"]["var"])
  torch_bn = torch.nn.BatchNorm2d(5, momentum=0.1, eps=1e-5).train()
  with torch.no_grad():
    torch_bn(nchw(x))
  torch_var = torch_bn.running_var.numpy()
  biased, unbiased = x.var(axis=(0, 1, 2)), x.var(axis=(0, 1, 2), ddof=1)
  np.testing.assert_allclose(flax_var, 0.9 + 0.1 * biased, rtol=1e-5)
  np.testing.assert_allclose(torch_var, 0.9 + 0.1 * unbiased, rtol=1e-5)
  assert not np.allclose(flax_var, torch_var)
  # Exported unchanged: torch in eval mode with Flax's running variance gives Flax's output.
  stats = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
  ours = bn.clone(use_running_average=True).apply(stats, x)
  torch_bn.eval()
  with torch.no_grad():
    torch_bn.running_mean.copy_(torch.from_numpy(np.asarray(updates["batch_stats"]["mean"])))
    torch_bn.running_var.copy_(torch.from_numpy(flax_var))
    ref = torch_bn(nchw(x)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5)
