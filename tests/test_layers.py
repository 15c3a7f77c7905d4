"""The CPU fast paths of the CNN layers (depthwise conv, stem conv, max-pool) against XLA's own ops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from kt_jax.models import layers


@pytest.mark.parametrize("size,kernel,stride,padding,dilation", [
    ((9, 12), 3, 1, "SAME", 1), ((9, 12), 3, 2, "SAME", 1), ((11, 7), 5, 2, "SAME", 1),
    ((10, 10), 3, 2, ((1, 1), (1, 1)), 1), ((8, 9), 5, 1, ((2, 2), (2, 2)), 1),
    ((9, 12), 3, 1, "SAME", 2), ((13, 10), 5, 1, "SAME", 4), ((10, 10), 3, 1, ((2, 2), (2, 2)), 2),
    ((12, 11), 3, 2, ((3, 1), (2, 2)), 3)])
def test_depthwise_matches_grouped_convolution(size, kernel, stride, padding, dilation):
  x = jnp.asarray(np.random.RandomState(0).randn(2, *size, 6), jnp.float32)
  module = layers.DepthwiseConv(kernel, stride, padding, dilation=dilation)
  variables = module.init(jax.random.key(0), x)
  ours = module.apply(variables, x)
  ref = lax.conv_general_dilated(x, variables["params"]["kernel"], (stride, stride), padding,
                                 rhs_dilation=(dilation, dilation), feature_group_count=6,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_cpu_max_pool_and_stem_conv_match_flax_values_and_gradients():
  """The CPU rewrites of ResNet's stem (for their backward speed) compute the same thing."""
  import flax.linen as nn
  r = np.random.RandomState(0)
  x = jnp.asarray(r.randn(2, 15, 17, 4), jnp.float32)
  pool = lambda x: layers.max_pool(x, 3, 2, 1)
  ref = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(pool(x), ref(x))
  g = lambda f: jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(x)
  np.testing.assert_allclose(g(pool), g(ref), atol=1e-6)

  conv = layers.StemConv(8, 7, 2, 3)
  variables = conv.init(jax.random.key(0), x)
  flax_conv = nn.Conv(8, (7, 7), (2, 2), padding=[(3, 3)] * 2, use_bias=False)
  np.testing.assert_allclose(conv.apply(variables, x), flax_conv.apply(variables, x), atol=1e-5)
  grads = [jax.grad(lambda v, x: jnp.sum(jnp.sin(m.apply(v, x))), (0, 1))(variables, x)
           for m in (conv, flax_conv)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, atol=1e-4)
