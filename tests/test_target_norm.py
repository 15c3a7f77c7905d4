"""Target normalisation against scikit-learn / NumPy, round trips, and the default (off)."""
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from kt_jax import config_defaults, proteus_recipe
from kt_jax.objectives import target_norm


def _features(n=400, d=12, seed=0):
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(d, d)) * rng.uniform(0.01, 5.0, size=d)  # very unequal scales
  return np.maximum(rng.normal(size=(n, d)) @ mixing + 1.0, 0.0).astype(np.float32)  # ReLU-like


def test_dim_is_a_standard_scaler():
  x = _features()
  stats = target_norm.fit("dim", x)
  np.testing.assert_allclose(np.asarray(target_norm.normalise(stats, x)),
                             StandardScaler().fit_transform(x), rtol=1e-4, atol=1e-4)


def test_variance_divides_by_the_mean_variance():
  x = _features()
  ours = np.asarray(target_norm.normalise(target_norm.fit("variance", x), x))
  np.testing.assert_allclose(ours, (x - x.mean(0)) / np.sqrt(x.var(0).mean()), rtol=1e-4,
                             atol=1e-5)
  assert np.mean(ours.var(0)) == pytest.approx(1.0, rel=1e-4)


def test_whiten_matches_pca_whitening_up_to_rotation():
  x = _features()
  ours = np.asarray(target_norm.normalise(target_norm.fit("whiten", x, eps=1e-9), x),
                    np.float64)
  reference = PCA(whiten=True).fit_transform(x.astype(np.float64))
  reference *= np.sqrt(len(x) / (len(x) - 1))  # sklearn whitens to unit n-1 variance
  np.testing.assert_allclose(np.cov(ours, rowvar=False, bias=True), np.eye(x.shape[1]),
                             atol=2e-3)
  # Whitenings differ by a rotation only: the Gram matrices of the samples agree.
  np.testing.assert_allclose(ours @ ours.T, reference @ reference.T, atol=2e-2)


@pytest.mark.parametrize("kind", target_norm.KINDS)
def test_denormalise_inverts_normalise(kind):
  x = _features(d=6)
  stats = target_norm.fit(kind, x)
  back = np.asarray(target_norm.denormalise(stats, target_norm.normalise(stats, x)))
  np.testing.assert_allclose(back, x, rtol=1e-3, atol=1e-3)


def test_unknown_kind_is_an_error():
  with pytest.raises(ValueError, match="Unknown target normalisation"):
    target_norm.fit("zscore", _features())


def test_off_by_default_and_for_dinov2_recipes():
  assert config_defaults.proteus_config().proteus.target_norm == "none"
  assert proteus_recipe.recipe("vit_small_patch14").proteus.target_norm == "none"
