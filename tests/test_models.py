"""Model shapes, fusions, branch logits (docs/methods.md §Setting) and initialisation (docs/reproducing.md §Data)."""

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


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
def test_subset_logits_zero_features_before_the_fusion(fusion):
  model, variables = _init(fusion=fusion)
  x = {m: jax.random.normal(jax.random.key(3), v.shape) for m, v in INPUTS.items()}
  out = model.apply(variables, x, train=False, subsets=models.all_subsets(model.modalities))
  subsets = out["subset_logits"]
  assert list(subsets) == [(), ("audio",), ("visual",), ("audio", "visual")]
  chex.assert_trees_all_close(subsets[("audio", "visual")], out["logits"])
  # Singletons are docs/methods.md §Setting's branch logits (full bias, no unimodal heads).
  for m in ("audio", "visual"):
    chex.assert_trees_all_close(subsets[(m,)], out["branch_logits"][m], atol=1e-6)
  # The empty subset: the fusion of all-zero features, the same for every example.
  fusion_vars = {"params": variables["params"]["fusion"]}
  fused = models.FUSIONS[fusion](K, ("audio", "visual"))
  zeros = {m: jnp.zeros_like(f) for m, f in out["features"].items()}
  chex.assert_trees_all_close(subsets[()], fused.apply(fusion_vars, zeros), atol=1e-6)
  np.testing.assert_allclose(subsets[()], np.broadcast_to(subsets[()][:1], (B, K)), atol=1e-6)
  # The public helper gives the same logits, and any subset order.
  again = models.subset_logits(model, variables, x, subsets=[("visual", "audio"), ()])
  assert list(again) == [("audio", "visual"), ()]
  chex.assert_trees_all_close(again[()], subsets[()], atol=1e-6)


def test_subset_logits_concat_and_sum_by_hand():
  model, variables = _init(fusion="concat")
  out = model.apply(variables, INPUTS, train=False, subsets=[(), ("visual",)])
  head = variables["params"]["fusion"]["head"]
  d = out["features"]["audio"].shape[-1]
  chex.assert_trees_all_close(out["subset_logits"][()], jnp.broadcast_to(head["bias"], (B, K)))
  chex.assert_trees_all_close(out["subset_logits"][("visual",)],
                              out["features"]["visual"] @ head["kernel"][d:] + head["bias"],
                              atol=1e-5)
  # Sum fusion: each fc_m keeps its bias when its feature is zeroed.
  model, variables = _init(fusion="sum")
  out = model.apply(variables, INPUTS, train=False, subsets=[(), ("audio",)])
  fc = variables["params"]["fusion"]
  bias = fc["fc_audio"]["bias"] + fc["fc_visual"]["bias"]
  chex.assert_trees_all_close(out["subset_logits"][()], jnp.broadcast_to(bias, (B, K)))
  chex.assert_trees_all_close(out["subset_logits"][("audio",)],
                              out["features"]["audio"] @ fc["fc_audio"]["kernel"] + bias,
                              atol=1e-5)


def test_subset_logits_ignore_unimodal_heads_and_split_bias():
  """Shapley values are about the fused classifier: no unimodal heads, no bias split."""
  model, variables = _init(fusion="concat", unimodal_heads=True, branch_bias="split")
  out = model.apply(variables, INPUTS, train=False, subsets=[("audio",)])
  head = variables["params"]["fusion"]["head"]
  d = out["features"]["audio"].shape[-1]
  chex.assert_trees_all_close(out["subset_logits"][("audio",)],
                              out["features"]["audio"] @ head["kernel"][:d] + head["bias"],
                              atol=1e-5)
  assert "subset_logits" not in model.apply(variables, INPUTS, train=False)
  with pytest.raises(ValueError, match="names \\['text'\\]"):
    model.apply(variables, INPUTS, train=False, subsets=[("text",)])


def _pmr_convnet_params(in_channels: int, dim: int = 512) -> int:
  """Parameters of PMR's released CG-MNIST `convnet` (models/basic_model.py), by layer."""
  conv = lambda cin, cout, k: cin * cout * k * k + cout  # Weights + bias.
  return (2 * in_channels                       # bn0 scale, bias
          + conv(in_channels, 32, 5) + conv(32, 32, 3) + conv(32, 64, 3) + conv(64, 64, 3)
          + 64 * dim + dim)                     # fc 64 -> dim


def test_conv4_encoder_shapes_and_parameter_count():
  x = {"gray": jnp.ones((B, 28, 28, 1)), "color": jnp.ones((B, 28, 28, 3))}
  model = models.MultimodalClassifier(
      ("gray", "color"), 10, encoders={m: {"kind": "conv4"} for m in x})
  variables = model.init(jax.random.key(0), x, train=False)
  out = model.apply(variables, x, train=False)
  for m, c in (("gray", 1), ("color", 3)):
    params = variables["params"][f"encoder_{m}"]
    assert sum(p.size for p in jax.tree.leaves(params)) == _pmr_convnet_params(c)
    chex.assert_shape(out["features"][m], (B, 512))  # One pooled size for both (RedReg).
    fmap, pooled = model.encoder(m).apply(
        {"params": params, "batch_stats": variables["batch_stats"][f"encoder_{m}"]},
        x[m], train=False)
    chex.assert_shape(fmap, (B, 7, 7, 64))  # 28 -> 14 (max-pool) -> 7 (conv3 stride 2).
    chex.assert_trees_all_close(pooled, fmap.mean(axis=(1, 2)) @ params["fc"]["kernel"]
                                + params["fc"]["bias"], atol=1e-5)
  assert _pmr_convnet_params(1) == 98786 and _pmr_convnet_params(3) == 100390
  chex.assert_shape(out["logits"], (B, 10))


def test_conv4_encoder_width_dim_and_bad_option():
  enc = models.make_encoder("conv4", 0.25, jnp.float32, dim=16)
  variables = enc.init(jax.random.key(0), jnp.ones((2, 28, 28, 3)), train=False)
  fmap, pooled = enc.apply(variables, jnp.ones((2, 28, 28, 3)), train=False)
  chex.assert_shape(fmap, (2, 7, 7, 16))
  chex.assert_shape(pooled, (2, 16))
  assert "conv4" in models.ENCODER_KINDS
  with pytest.raises(ValueError, match="Unknown conv4 encoder option"):
    models.make_encoder("conv4", 1.0, jnp.float32, hidden=3)


def test_resnet_blocks_per_stage():
  """blocks=2 is ResNet-18 (8 basic blocks); blocks=1 keeps each stage's stride and
  projected shortcut with one block (the tests' toy encoder), same feature map."""
  x = jnp.ones((2, 32, 32, 3))
  outs = {}
  for blocks in (2, 1):
    enc = models.make_encoder("resnet18", 1 / 16, jnp.float32, blocks=blocks)
    variables = enc.init(jax.random.key(0), x, train=False)
    resnet = variables["params"]["resnet"]
    assert sorted(k for k in resnet if k.startswith("stage")) == sorted(
        f"stage{s}_block{b}" for s in range(1, 5) for b in range(1, blocks + 1))
    for s in (2, 3, 4):  # Each later stage opens with a strided, projected block.
      assert "proj_conv" in resnet[f"stage{s}_block1"]
    convs = [p for p in jax.tree_util.tree_flatten_with_path(resnet)[0]
             if "conv" in jax.tree_util.keystr(p[0]) and p[1].ndim == 4]
    assert len(convs) == 1 + 2 * 4 * blocks + 3  # stem + 2 per block + 3 projections
    outs[blocks] = enc.apply(variables, x, train=False)
  chex.assert_shape([outs[2][0], outs[1][0]], (2, 1, 1, 32))  # 32 -> 16 -> 8 -> 4 -> 2 -> 1.
  chex.assert_shape([outs[2][1], outs[1][1]], (2, 32))
  with pytest.raises(ValueError, match=r"Unknown resnet18 encoder option.*valid: width, blocks"):
    models.make_encoder("resnet18", 1.0, jnp.float32, depth=10)
