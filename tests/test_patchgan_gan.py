"""PatchGAN against taming's NLayerDiscriminator in PyTorch (same weights), and the GAN loss
pieces (hinge losses, adaptive weight, disc_start) against their formulas with torch autograd."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from kt_jax.models.patchgan import PatchGAN
from kt_jax.objectives import gan


def taming_discriminator(input_nc=3, ndf=8, n_layers=3):
  """taming/modules/discriminator/model.py NLayerDiscriminator with BatchNorm, verbatim logic."""
  kw, padw = 4, 1
  seq = [tnn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), tnn.LeakyReLU(0.2, True)]
  nf_mult = 1
  for n in range(1, n_layers):
    nf_mult_prev, nf_mult = nf_mult, min(2 ** n, 8)
    seq += [tnn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kw, 2, padw, bias=False),
            tnn.BatchNorm2d(ndf * nf_mult), tnn.LeakyReLU(0.2, True)]
  nf_mult_prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
  seq += [tnn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kw, 1, padw, bias=False),
          tnn.BatchNorm2d(ndf * nf_mult), tnn.LeakyReLU(0.2, True)]
  seq += [tnn.Conv2d(ndf * nf_mult, 1, kw, 1, padw)]
  return tnn.Sequential(*seq)


def torch_to_flax(module):
  """Copies the torch discriminator's weights into the PatchGAN param/batch_stats layout."""
  convs = [m for m in module if isinstance(m, tnn.Conv2d)]
  norms = [m for m in module if isinstance(m, tnn.BatchNorm2d)]
  params, stats = {}, {}
  for i, conv in enumerate(convs):
    entry = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0)}
    if conv.bias is not None:
      entry["bias"] = conv.bias.detach().numpy()
    params[f"conv_{i}"] = entry
  for i, norm in enumerate(norms, start=1):
    params[f"norm_{i}"] = {"scale": norm.weight.detach().numpy(), "bias": norm.bias.detach().numpy()}
    stats[f"norm_{i}"] = {"mean": norm.running_mean.numpy().copy(),
                          "var": norm.running_var.numpy().copy()}
  return {"params": params, "batch_stats": stats}


def test_patchgan_matches_taming_in_train_and_eval_mode():
  torch.manual_seed(0)
  ref = taming_discriminator()
  for m in ref:  # non-trivial norm parameters and running statistics
    if isinstance(m, tnn.BatchNorm2d):
      m.weight.data.normal_(1.0, 0.3)
      m.bias.data.normal_(0.0, 0.3)
      m.running_mean.normal_(0.0, 0.1)
      m.running_var.uniform_(0.5, 1.5)
  x = np.random.RandomState(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  model = PatchGAN(ndf=8, n_layers=3)
  init = model.init(jax.random.key(0), jnp.asarray(x), train=False)
  variables = torch_to_flax(ref)
  assert jax.tree.structure(init) == jax.tree.structure(variables)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
  ref.eval()
  with torch.no_grad():
    expected = ref(xt).numpy().transpose(0, 2, 3, 1)
  out = model.apply(variables, jnp.asarray(x), train=False)
  assert out.shape == expected.shape == (2, 6, 6, 1)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6 patches
  np.testing.assert_allclose(out, expected, atol=2e-5 * np.abs(expected).max())
  ref.train()
  with torch.no_grad():
    expected = ref(xt).numpy().transpose(0, 2, 3, 1)
  out, updates = model.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(out, expected, atol=2e-5 * np.abs(expected).max())
  # Running means move as torch's (momentum 0.1). Running variances: torch folds in the
  # unbiased batch variance, Flax the biased one, so they differ by n/(n-1) in that term.
  for i in (1, 2, 3):
    np.testing.assert_allclose(updates["batch_stats"][f"norm_{i}"]["mean"],
                               ref[[j for j, m in enumerate(ref)
                                    if isinstance(m, tnn.BatchNorm2d)][i - 1]].running_mean,
                               rtol=1e-4, atol=1e-6)


def test_patchgan_init_follows_taming_and_actnorm_normalises():
  variables = PatchGAN(ndf=16, n_layers=2).init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  kernel = variables["params"]["conv_1"]["kernel"]
  assert "bias" not in variables["params"]["conv_1"]  # BatchNorm carries the bias
  assert abs(float(jnp.std(kernel)) - 0.02) < 0.004
  assert abs(float(jnp.mean(variables["params"]["norm_1"]["scale"])) - 1.0) < 0.01
  x = jax.random.normal(jax.random.key(2), (4, 32, 32, 3)) * 3 + 1
  model = PatchGAN(ndf=16, n_layers=2, norm="actnorm")
  variables = model.init(jax.random.key(1), x)
  # ActNorm's data-dependent init: the first normed activations have zero mean, unit std.
  _, inter = model.apply(variables, x, capture_intermediates=True)
  normed = inter["intermediates"]["norm_1"]["__call__"][0]
  np.testing.assert_allclose(jnp.mean(normed, (0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(jnp.std(normed, (0, 1, 2)), 1.0, atol=1e-3)


def test_hinge_losses_and_disc_start():
  rng = np.random.RandomState(0)
  real, fake = rng.randn(3, 5, 5, 1) * 2, rng.randn(3, 5, 5, 1) * 2
  expected_d = 0.5 * (np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake)))
  np.testing.assert_allclose(gan.hinge_d_loss(real, fake), expected_d, rtol=1e-6)
  np.testing.assert_allclose(gan.hinge_g_loss(fake), -np.mean(fake), rtol=1e-6)
  # taming's adopt_weight: global_step < threshold -> 0.
  assert [float(gan.disc_factor(s, 3)) for s in range(5)] == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("scale", [1.0, 1e-7])  # 1e-7: tiny GAN gradient, clipped at 1e4
def test_adaptive_weight_and_outer_gradient_match_taming_autograd(scale):
  """A 'decoder' whose last layer is a conv: the weight from the vjp trick equals taming's
  autograd.grad formula, and the generator loss's gradient (weight held constant) equals
  torch's, for the last layer and for what comes before it."""
  rng = np.random.RandomState(0)
  h = rng.randn(2, 6, 8, 8).astype(np.float32)           # features before the last layer
  x = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
  w = (rng.randn(3, 6, 3, 3) * 0.2).astype(np.float32)
  b = (rng.randn(3) * 0.1).astype(np.float32)
  disc = taming_discriminator(ndf=4, n_layers=1).eval()
  for p in disc.parameters():
    p.data.mul_(scale)
  disc_weight = 0.8

  ht, wt = torch.tensor(h, requires_grad=True), torch.tensor(w, requires_grad=True)
  recon = torch.nn.functional.conv2d(ht, wt, torch.tensor(b), padding=1)
  nll = torch.mean(torch.abs(torch.tensor(x) - recon)) + 0.5 * torch.mean(recon ** 2)
  g_loss = -torch.mean(disc(recon))
  nll_grads = torch.autograd.grad(nll, wt, retain_graph=True)[0]
  g_grads = torch.autograd.grad(g_loss, wt, retain_graph=True)[0]
  d_weight = torch.clamp(torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4), 0.0, 1e4)
  expected_weight = (d_weight * disc_weight).item()
  total = nll + d_weight.detach() * disc_weight * g_loss
  grad_h, grad_w = torch.autograd.grad(total, (ht, wt))

  variables = torch_to_flax(disc)
  d_model = PatchGAN(ndf=4, n_layers=1)
  xj = jnp.asarray(x.transpose(0, 2, 3, 1))

  def generator_loss(hj, wj):
    def forward(kernel):
      out = jax.lax.conv_general_dilated(hj, kernel, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return out + b, None
    recon, pull_back, _ = gan.last_layer_vjp(forward, wj)
    nll, _, d_nll = gan.value_and_output_grad(
        lambda r: (jnp.mean(jnp.abs(xj - r)) + 0.5 * jnp.mean(r ** 2), None), recon)
    g, _, d_g = gan.value_and_output_grad(
        lambda r: (gan.hinge_g_loss(d_model.apply(variables, r, train=False)), None), recon)
    weight = gan.adaptive_weight(pull_back(d_nll), pull_back(d_g), disc_weight)
    return nll + weight * g, weight

  hj, wj = jnp.asarray(h.transpose(0, 2, 3, 1)), jnp.asarray(w.transpose(2, 3, 1, 0))
  (_, weight), (gh, gw) = jax.value_and_grad(generator_loss, (0, 1), has_aux=True)(hj, wj)
  np.testing.assert_allclose(weight, expected_weight, rtol=1e-4)
  if scale < 1:
    assert expected_weight == pytest.approx(1e4 * disc_weight)
  np.testing.assert_allclose(gh, grad_h.numpy().transpose(0, 2, 3, 1), rtol=1e-4,
                             atol=1e-4 * np.abs(grad_h.numpy()).max())
  np.testing.assert_allclose(gw, grad_w.numpy().transpose(2, 3, 1, 0), rtol=1e-4,
                             atol=1e-4 * np.abs(grad_w.numpy()).max())
