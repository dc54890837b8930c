"""gemb.model.layers.einsum / matmul: float32 exactly jnp.einsum; bfloat16 accumulated in
float32 (one rounding, of the result), against numpy float64 on the same bfloat16 inputs."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from gemb.model import layers


def _operands(dtype, m=48, k=640, n=24, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(m, k)), dtype),
          jnp.asarray(rng.normal(size=(k, n)), dtype))


def test_float32_is_exactly_jnp_einsum():
  x, w = _operands(jnp.float32)
  np.testing.assert_array_equal(np.asarray(layers.matmul(x, w)),
                                np.asarray(jnp.einsum("mk,kn->mn", x, w)))
  q = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 5, 8)), jnp.float32)
  got = layers.einsum("bhqd,bhkd->bhqk", q, q, out_dtype=jnp.float32)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.einsum("bhqd,bhkd->bhqk", q, q)))


@pytest.mark.parametrize("out_dtype", [None, jnp.float32])
def test_bfloat16_accumulates_in_float32(out_dtype):
  x, w = _operands(jnp.bfloat16)
  exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
  got = layers.einsum("mk,kn->mn", x, w, out_dtype=out_dtype)
  assert got.dtype == (out_dtype or jnp.bfloat16)
  got = np.asarray(got, np.float64)
  if out_dtype is None:
    # One rounding of the float32 sum to bfloat16: within half a bfloat16 ulp of the exact
    # value (plus float32's own error), where a bfloat16 running sum over k=640 terms drifts
    # by many ulps.
    rounded = exact.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)
    ulp = np.abs(rounded) * 2.0 ** -7
    assert np.all(np.abs(got - exact) <= 0.5 * ulp + 1e-4)
  else:
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-4)
  print(f"\nbfloat16 einsum -> {out_dtype}: max abs diff vs float64 "
        f"{np.max(np.abs(got - exact)):.3g} (|values| up to {np.max(np.abs(exact)):.1f})")


def test_bfloat16_gradients_match_float32():
  x, w = _operands(jnp.bfloat16)
  loss = lambda x, w: jnp.sum(layers.matmul(x, w).astype(jnp.float32) ** 2)  # noqa: E731
  grads = jax.grad(loss, argnums=(0, 1))(x, w)
  reference = jax.grad(loss, argnums=(0, 1))(x.astype(jnp.float32), w.astype(jnp.float32))
  for got, want in zip(grads, reference):
    assert got.dtype == jnp.bfloat16
    got, want = np.asarray(got, np.float32), np.asarray(want)
    cos = np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want)
    assert cos > 0.9999, cos
