"""The Flax MobileViT-V2 against transformers' MobileViTV2 with random weights and BN stats:
import (state dict, transformers directory), export back, and the registered variants."""
import jax
import numpy as np
import pytest
import torch
from transformers import (MobileViTV2Config, MobileViTV2ForImageClassification,
                          MobileViTV2Model)

from kt_jax import convert, models
from kt_jax.convert import mobilevit_v2 as convert_mvit
from kt_jax.convert.strict import CheckpointMismatchError
from kt_jax.models import mobilevit_v2 as mvit

TINY = dict(width_multiplier=0.5, n_attn_blocks=[1, 2, 1], base_attn_unit_dims=[32, 48, 64])


def randomise(model, seed=0):
  """Non-trivial weights everywhere: BN running stats and affine, GroupNorm affine, biases."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
        m.weight.uniform_(0.5, 1.5, generator=gen)
        m.bias.normal_(0.0, 0.2, generator=gen)
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0.0, 0.2, generator=gen)
        m.running_var.uniform_(0.5, 2.0, generator=gen)
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.normal_(0.0, 1.0 / fan_in ** 0.5, generator=gen)
        if m.bias is not None:
          m.bias.normal_(0.0, 0.1, generator=gen)
  return model.eval()


def tiny_torch(head: int = 0, seed: int = 0, **overrides):
  torch.manual_seed(seed)
  config = MobileViTV2Config(**{**TINY, **overrides}, num_labels=max(head, 1))
  model = MobileViTV2ForImageClassification(config) if head else MobileViTV2Model(config)
  return randomise(model, seed)


def images(size, seed=0, batch=2):
  return np.random.default_rng(seed).uniform(size=(batch, size, size, 3)).astype(np.float32)


def nchw(x):
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def assert_close(name, ours, ref, tol=1e-4):
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
  diff = float(np.max(np.abs(ours - ref)))
  scale = max(float(np.max(np.abs(ref))), 1.0)
  print(f"{name}: max abs diff {diff:.3g} (reference max {scale:.3g})")
  assert diff <= tol * scale, f"{name}: max abs diff {diff} > {tol} x {scale}"
  return diff


def apply(module, variables, x):
  return jax.tree.map(np.asarray, jax.jit(module.apply)(variables, x))


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
  """A tiny MobileViTV2ForImageClassification saved as a transformers directory and loaded the
  way a user would, with the reference outputs at 64 px."""
  model = tiny_torch(head=5, seed=1)
  out_dir = tmp_path_factory.mktemp("mvit") / "hf"
  model.save_pretrained(out_dir)
  x = images(64, seed=1)
  with torch.no_grad():
    ref = model.mobilevitv2(nchw(x))
    logits = model.classifier(ref.pooler_output).numpy()
  module, variables = convert.load_pretrained(str(out_dir))
  return dict(model=model, x=x, ref=ref, logits=logits, module=module, variables=variables,
              ours=apply(module, variables, x))


def test_features_and_logits_match_transformers(hf_run):
  ours, ref = hf_run["ours"], hf_run["ref"]
  assert isinstance(hf_run["module"], mvit.MobileViTV2) and hf_run["module"].num_classes == 5
  assert set(hf_run["variables"]) == {"params", "batch_stats"}
  assert_close("pooled", ours["x_norm_clstoken"], ref.pooler_output.numpy())
  assert_close("feature map", ours["feature_map"],
               ref.last_hidden_state.numpy().transpose(0, 2, 3, 1))
  assert_close("logits", ours["logits"], hf_run["logits"])


def test_export_round_trips_every_tensor(hf_run):
  back = convert_mvit.to_state_dict(hf_run["variables"])
  original = {k: v.numpy() for k, v in hf_run["model"].state_dict().items()
              if not k.endswith("num_batches_tracked")}
  assert set(back) == set(original)
  for k, v in original.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_odd_grid_matches_transformers():
  """At 96 px the last block sees a 3x3 grid: transformers drops the odd row/column before the
  transformer and folds zeros back; so do we."""
  model = tiny_torch()
  x = images(96, batch=1)
  with torch.no_grad():
    ref = model(nchw(x)).last_hidden_state.numpy().transpose(0, 2, 3, 1)
  module, variables = convert_mvit.convert(model.state_dict(), hf_config=model.config.to_dict())
  assert_close("feature map 96 px", apply(module, variables, x)["feature_map"], ref)


def test_state_dict_without_config_picks_the_variant(hf_run):
  """A bare state dict (no config.json) of a registered width imports through the CNN path
  and gives the same model as with its config."""
  state = tiny_torch(width_multiplier=0.75).state_dict()
  module, variables = convert.convert_state_dict(state)
  with_config, expected = convert_mvit.convert(
      state, hf_config=MobileViTV2Config(**{**TINY, "width_multiplier": 0.75}).to_dict())
  assert module == with_config
  jax.tree.map(np.testing.assert_array_equal, variables, expected)


def test_wrong_checkpoint_names_the_keys():
  state = tiny_torch().state_dict()
  del state["encoder.layer.3.conv_kxk.normalization.running_var"]
  with pytest.raises(CheckpointMismatchError, match="layer.3.conv_kxk.normalization.running_var"):
    convert_mvit.convert(state, hf_config=MobileViTV2Config(**TINY).to_dict())


@pytest.mark.parametrize("name", sorted(mvit.VARIANTS))
def test_registered_variants_have_transformers_shapes(name):
  """Each registered variant has exactly the variables of transformers' model at its width."""
  torch_model = MobileViTV2Model(MobileViTV2Config(width_multiplier=mvit.VARIANTS[name]))
  expected = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()
              if not k.endswith("num_batches_tracked")}
  module = models.create(name)
  ours = {convert_mvit.torch_key(p): s for p, s in
          convert.strict.variable_shapes(module, image_size=64).items()}
  assert set(ours) == set(expected)
  for key, shape in ours.items():
    assert int(np.prod(shape)) == int(np.prod(expected[key])), key


@pytest.mark.slow
def test_full_size_matches_transformers():
  """mobilevit_v2_100 at its native 256 px."""
  torch.manual_seed(0)
  model = randomise(MobileViTV2Model(MobileViTV2Config()))
  x = images(256, batch=1)
  with torch.no_grad():
    ref = model(nchw(x)).pooler_output.numpy()
  module, variables = convert_mvit.convert(model.state_dict(), "mobilevit_v2_100")
  assert_close("pooled 256", apply(module, variables, x)["x_norm_clstoken"], ref)
