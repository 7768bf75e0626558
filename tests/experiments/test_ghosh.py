"""Tests of experiments/ghosh.py: its pieces, and the --quick run."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byzjax import compression
from byzjax.transforms.compress import NormMessage

from tests import helpers




ghosh = helpers.load_script("experiments/ghosh.py", "_exp_ghosh")


def test_error_feedback_sends_scale_of_corrected_update():
  # Section 7: the message is C(p) = {||p||_1 / d, sign(p)}, p = gamma g + e.
  tx = ghosh.error_feedback_sending_norm(compression.scaled_sign, scale=0.5)
  params = {"w": jnp.zeros(4)}
  state = tx.init(params)
  g1 = {"w": jnp.array([4.0, -2.0, 0.0, 2.0])}
  update = jax.jit(tx.update)
  msg, state = update(g1, state)
  assert isinstance(msg, NormMessage)
  p = 0.5 * np.array([4.0, -2.0, 0.0, 2.0])
  sent = np.abs(p).sum() / 4 * np.sign(p)
  np.testing.assert_allclose(msg.update["w"], sent, rtol=1e-6)
  np.testing.assert_allclose(msg.norm, np.abs(p).sum() / 4, rtol=1e-6)
  g2 = {"w": jnp.array([1.0, 1.0, 1.0, -3.0])}
  msg, _ = update(g2, state)
  p2 = 0.5 * np.asarray(g2["w"]) + (p - sent)  # memory carried over
  np.testing.assert_allclose(msg.norm, np.abs(p2).sum() / 4, rtol=1e-6)
  np.testing.assert_allclose(msg.update["w"],
                             np.abs(p2).sum() / 4 * np.sign(p2), rtol=1e-6)


def test_attack_noise_hits_only_byzantine_rows_before_compression():
  # With lr = 1 and w = 0, the server update is -aggregate(messages). Three
  # workers send the same gradient; the first (Byzantine) adds noise. Its
  # message stays a scaled sign of ITS (noisy) gradient.
  tx = ghosh.linreg_server_tx("mean", num_workers=3, num_byzantine=1,
                              num_trimmed=1, lr=1.0, sign_lr=1.0,
                              attack_key=jax.random.key(0))
  params = {"w": jnp.zeros(5)}
  g = jnp.array([1.0, -2.0, 3.0, -4.0, 5.0])
  stacked = {"w": jnp.stack([g, g, g])}
  upd, _ = jax.jit(tx.update)(stacked, tx.init(params), params)
  honest = np.abs(g).mean() * np.sign(g)
  byz = -3 * np.asarray(upd["w"]) - 2 * honest  # recover worker 0's message
  assert not np.allclose(byz, honest, atol=1e-3)  # the noise changed it
  assert np.allclose(np.abs(byz), np.abs(byz)[0], rtol=1e-4)  # scaled sign


@pytest.mark.slow
def test_quick_run(tmp_path):
  # --quick asserts the claims of Section 7 itself (ghosh.check_claims):
  # thresholding >= 100x better than the plain average, ahead of signSGD,
  # error feedback with thresholding >= 10x better than without, and
  # training progress on the network under both label attacks.
  out = ghosh.main(["--quick", "--out", str(tmp_path)])
  for name in ("linreg.csv", "nn.csv", "linreg.png", "nn.png", "summary.md",
               "config.json"):
    assert (tmp_path / name).exists(), name
  assert any(k.startswith("mean/alg1") for k in out["claims"])
  assert any(k.startswith("train CE") for k in out["claims"])
