"""The CPU fast path of DepthwiseConv against XLA's own grouped convolution."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kt_jax.models import layers


@pytest.mark.parametrize("size,kernel,stride,padding", [
    ((9, 12), 3, 1, "SAME"), ((9, 12), 3, 2, "SAME"), ((11, 7), 5, 2, "SAME"),
    ((10, 10), 3, 2, ((1, 1), (1, 1))), ((8, 9), 5, 1, ((2, 2), (2, 2)))])
def test_depthwise_matches_grouped_convolution(size, kernel, stride, padding):
  x = jnp.asarray(np.random.RandomState(0).randn(2, *size, 6), jnp.float32)
  module = layers.DepthwiseConv(kernel, stride, padding)
  variables = module.init(jax.random.key(0), x)
  ours = module.apply(variables, x)
  ref = lax.conv_general_dilated(x, variables["params"]["kernel"], (stride, stride), padding,
                                 feature_group_count=6,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
