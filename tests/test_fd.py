"""The Frechet distance against closed forms, scipy's sqrtm, and the command line end to end."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from kt_jax.eval import fd
from kt_jax.models.registry import InputSpec


def _random_cov(rng, dim, rank=None):
  m = rng.normal(size=(dim, rank or dim))
  return m @ m.T / dim


def test_fd_of_a_set_with_itself_is_zero():
  feats = np.random.default_rng(0).normal(size=(50, 20)) * 3 + 1
  assert fd.feature_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
  # singular covariances (fewer samples than dimensions) too
  few = feats[:8]
  assert fd.feature_distance(few, few) == pytest.approx(0.0, abs=1e-8)


def test_fd_matches_the_closed_form_for_a_known_shift_and_scale():
  """N(m, a^2 I) vs N(m + s, b^2 I): |s|^2 + d (a - b)^2."""
  dim = 6
  shift = np.arange(dim, dtype=np.float64)
  a, b = 1.5, 0.5
  value = fd.frechet_distance(np.zeros(dim), a * a * np.eye(dim), shift, b * b * np.eye(dim))
  assert value == pytest.approx(np.sum(shift ** 2) + dim * (a - b) ** 2, rel=1e-12)


def test_fd_matches_scipy_sqrtm_for_general_covariances():
  rng = np.random.default_rng(1)
  dim = 12
  s1, s2 = _random_cov(rng, dim), _random_cov(rng, dim)
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  root = np.real(scipy.linalg.sqrtm(s1 @ s2))
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root)
  assert fd.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
  # rank-deficient: scipy's sqrtm struggles, the symmetric form is still exact; compare
  # with the definition through the PSD square root of s1.
  s3 = _random_cov(rng, dim, rank=3)
  w, v = np.linalg.eigh(s3)
  r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  inner = np.linalg.eigvalsh(r @ s2 @ r)
  expected = np.trace(s3) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None)))
  assert fd.frechet_distance(mu1, s3, mu1, s2) == pytest.approx(expected, rel=1e-8)


def test_fd_of_samples_approaches_the_gaussians_closed_form():
  rng = np.random.default_rng(2)
  dim, n = 4, 200_000
  shift = np.array([1.0, -2.0, 0.5, 0.0])
  x = rng.normal(size=(n, dim))
  y = rng.normal(size=(n, dim)) * 2.0 + shift
  expected = np.sum(shift ** 2) + dim * (1.0 - 2.0) ** 2
  assert fd.feature_distance(x, y) == pytest.approx(expected, rel=0.02)


def _write_images(folder, seed, count, brightness):
  folder.mkdir()
  rng = np.random.default_rng(seed)
  for i in range(count):
    pixels = np.clip(rng.normal(brightness, 40, size=(24, 24, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / f"{i}.png")


class _MeanColour(nn.Module):
  """A feature model whose pooled feature is the mean colour and its square: the folders'
  Gaussians are then known from the pixels alone."""

  @nn.compact
  def __call__(self, x):
    mean = x.mean(axis=(1, 2))
    return {"x_norm_clstoken": jnp.concatenate([mean, mean ** 2], axis=-1)}


def test_folder_features_reads_every_image(tmp_path):
  """Flat-coloured images survive the loader's resize and crop, so the features are known."""
  (tmp_path / "a").mkdir()
  colours = np.random.default_rng(0).integers(0, 256, size=(5, 3)).astype(np.uint8)
  for i, colour in enumerate(colours):
    Image.fromarray(np.tile(colour, (20, 28, 1))).save(tmp_path / "a" / f"{i}.png")
  spec = InputSpec(image_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  feats = fd.folder_features(str(tmp_path / "a"), _MeanColour(), {}, spec, batch_size=4)
  np.testing.assert_allclose(feats[:, :3], colours / 255.0, atol=1.5 / 255)


@pytest.mark.slow
def test_command_line_prints_the_distance(tmp_path, capsys):
  _write_images(tmp_path / "a", 0, 6, 60)
  _write_images(tmp_path / "b", 1, 6, 190)
  # any registered model with random weights gives a feature space
  args = ["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--model", "random:resnet18",
          "--image_size", "32", "--batch_size", "8"]
  assert fd.main(args) == 0
  distance = float(capsys.readouterr().out.strip().splitlines()[-1])
  assert distance > 0


def test_command_line_rejects_a_missing_folder(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    fd.main(["--a", str(tmp_path / "nope"), "--b", str(tmp_path)])
  assert exit_info.value.code == 2
  assert "no such directory" in capsys.readouterr().err
