"""Model shapes, fusions, branch logits (SPEC §1) and initialisation (SPEC §6)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax import models

B, K = 3, 5
INPUTS = {"audio": jnp.ones((B, 16, 12, 1)), "visual": jnp.ones((B, 2, 16, 16, 3))}


def _init(**kw):
  model = models.MultimodalClassifier(("audio", "visual"), K, width=1 / 16, **kw)
  variables = model.init(jax.random.key(0), INPUTS, train=False)
  return model, variables


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
@pytest.mark.parametrize("heads", [False, True])
def test_output_shapes_every_fusion(fusion, heads):
  model, variables = _init(fusion=fusion, unimodal_heads=heads)
  x = {m: jax.random.normal(jax.random.key(1), v.shape) for m, v in INPUTS.items()}
  out, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  d = 32  # 512 * width
  chex.assert_shape(out["logits"], (B, K))
  for m in ("audio", "visual"):
    chex.assert_shape(out["branch_logits"][m], (B, K))
    chex.assert_shape(out["features"][m], (B, d))
  assert ("unimodal_logits" in out) == heads
  assert sorted(k for k in variables["params"] if k.startswith("head_")) == (
      ["head_audio", "head_visual"] if heads else [])
  # Train mode updates BatchNorm statistics; eval mode must not need them mutable.
  assert not jax.tree.all(jax.tree.map(jnp.array_equal, mutated["batch_stats"],
                                       variables["batch_stats"]))
  model.apply(variables, x, train=False)


def test_concat_branch_logits_are_w_m_z_m_plus_b():
  model, variables = _init(fusion="concat")
  out = model.apply(variables, INPUTS, train=False)
  head = variables["params"]["fusion"]["head"]
  w, b = head["kernel"], head["bias"]
  d = out["features"]["audio"].shape[-1]
  chex.assert_trees_all_close(out["branch_logits"]["audio"],
                              out["features"]["audio"] @ w[:d] + b, atol=1e-5)
  chex.assert_trees_all_close(out["branch_logits"]["visual"],
                              out["features"]["visual"] @ w[d:] + b, atol=1e-5)


def test_split_bias_branch_logits_sum_to_fused():
  model, variables = _init(fusion="concat", branch_bias="split")
  out = model.apply(variables, INPUTS, train=False)
  head = variables["params"]["fusion"]["head"]
  d = out["features"]["audio"].shape[-1]
  chex.assert_trees_all_close(out["branch_logits"]["audio"],
                              out["features"]["audio"] @ head["kernel"][:d] + head["bias"] / 2,
                              atol=1e-5)
  chex.assert_trees_all_close(out["branch_logits"]["audio"] + out["branch_logits"]["visual"],
                              out["logits"], atol=1e-5)


def test_unimodal_heads_give_branch_logits():
  model, variables = _init(fusion="concat", unimodal_heads=True)
  out = model.apply(variables, INPUTS, train=False)
  chex.assert_trees_all_equal(out["branch_logits"], out["unimodal_logits"])


def test_visual_frames_are_pooled_over_time():
  model, variables = _init()
  enc = model.encoder("visual")
  sub = {"params": variables["params"]["encoder_visual"],
         "batch_stats": variables["batch_stats"]["encoder_visual"]}
  x = jax.random.normal(jax.random.key(2), (B, 2, 16, 16, 3))
  fmap, pooled = enc.apply(sub, x, train=False)
  assert fmap.shape[:2] == (B, 2)
  chex.assert_trees_all_close(pooled, fmap.mean(axis=(1, 2, 3)), atol=1e-6)
  # Folding frames into the batch: each frame is encoded independently.
  f0, _ = enc.apply(sub, x[:, :1], train=False)
  chex.assert_trees_all_close(fmap[:, :1], f0, atol=1e-5)


def test_width_multiplier_and_three_modalities():
  x = dict(INPUTS, text=jnp.ones((B, 16, 16, 1)))
  model = models.MultimodalClassifier(("audio", "visual", "text"), K, width=0.125,
                                      fusion="gated")
  out = model.apply(model.init(jax.random.key(0), x, train=False), x, train=False)
  chex.assert_shape(out["features"]["text"], (B, 64))
  chex.assert_shape(out["branch_logits"]["text"], (B, K))


def test_initialisation_follows_spec():
  _, variables = _init(fusion="concat")
  kernel = np.asarray(variables["params"]["fusion"]["head"]["kernel"])
  fan_in, fan_out = kernel.shape
  limit = np.sqrt(6.0 / (fan_in + fan_out))  # Xavier uniform.
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.5 * limit
  conv = np.asarray(variables["params"]["encoder_audio"]["resnet"]["conv_init"]["kernel"])
  fan_out_conv = conv.shape[0] * conv.shape[1] * conv.shape[3]  # Kaiming, fan_out.
  np.testing.assert_allclose(conv.std(), np.sqrt(2.0 / fan_out_conv), rtol=0.35)


def test_modality_labels():
  _, variables = _init(unimodal_heads=True)
  labels = models.modality_labels(variables["params"])
  assert set(jax.tree.leaves(labels["encoder_audio"])) == {"audio"}
  assert set(jax.tree.leaves(labels["encoder_visual"])) == {"visual"}
  assert set(jax.tree.leaves(labels["fusion"])) | set(jax.tree.leaves(labels["head_audio"])) == {
      "head"}


def test_bad_fusion_raises():
  with pytest.raises(ValueError, match="Unknown fusion 'nope'"):
    _init(fusion="nope")
