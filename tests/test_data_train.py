"""The real datasets through the trainer: tiny on-disk fixtures -> prepare -> Experiment.

Each dataset is written in its real format (WAVs + JPEG frame folders for CREMA-D,
a MultiBench pickle for CMU-MOSI, FSDD WAVs for AV-digits, npz shards for `folder`),
prepared with its own builder, configured by its `configs/<name>.py:joint,smoke` shrunk
to toy sizes, and trained for two steps and evaluated. CMU-MOSI (M = 3, Transformer
encoders) also runs one step of every method. Compiles dominate the runtime: one small
Experiment per case, batch 8 over the 8 fake devices.
"""

import functools

import chex
import jax
import ml_collections
import numpy as np
import pytest

from configs import av_digits as av_digits_config
from configs import cmu_mosi as cmu_mosi_config
from configs import cremad as cremad_config
from configs import folder as folder_config
from data import av_digits
from data import cmu_mosi
from data import cremad
from data import folder
from redreg_jax import input_pipeline
from redreg_jax import train
from tests import data_fixtures as fx
from tests.test_data_av_digits import _write_fake_fsdd

# Shared shrink: a 4-channel ResNet-18 with one basic block per stage (every stage, stride
# and projection kept; these tests check the data path, not the network), one batch of 8
# per step (one per fake device).
SMALL = {"model.width": 1 / 16, "model.resnet_blocks": 1, "batch_size": 8,
         "eval_batch_size": 8, "num_epochs": 1, "train.input_threads": 1,
         "train.device_prefetch": 1}
TINY_TRANSFORMER = dict(num_layers=1, num_heads=2, dim=8, mlp_dim=16, max_len=8,
                        pooled_dim=8)
MOSI_METHODS = ("joint", "joint_star", "redreg", "redreg_star", "inforeg", "ogm_ge",
                "mmpareto")


def _config(module, arg: str, **overrides) -> ml_collections.ConfigDict:
  """`configs/<module>.py:<arg>` with dotted-key overrides."""
  c = module.get_config(arg)
  for key, value in {**SMALL, **overrides}.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _check_batch(exp, batch):
  n = exp.batch_size
  assert batch["label"].shape == (n,) and batch["label"].dtype == np.int32
  for m in exp.modalities:
    assert batch[m].shape == (n,) + tuple(exp.info.shapes[m]), m
    assert batch[m].dtype == np.float32 and bool(np.all(np.isfinite(batch[m]))), m


def _check_metrics(exp, metrics):
  host = jax.device_get(metrics)
  assert np.isfinite(host["loss"]) and host["loss"] > 0 and bool(host["finite"])
  assert {"loss_multimodal", "accuracy", "grad_norm"} <= set(host)
  assert {f"accuracy_{m}" for m in exp.modalities} <= set(host)
  assert np.isfinite(host["grad_norm"]) and host["grad_norm"] > 0


def _train_two_steps_and_evaluate(exp):
  """Two steps (epochs 0 and 1, fresh augmentation each) and two identical evaluations."""
  state = exp.init_state()
  for epoch in (0, 1):
    batch = next(iter(exp.train_batches(epoch)))
    _check_batch(exp, batch)
    state, metrics = exp.train_step(state, batch)
    _check_metrics(exp, metrics)
  assert int(state.step) == 2
  first = exp.evaluate(state, "validation")
  again = exp.evaluate(state, "validation")
  chex.assert_trees_all_equal(first, again)  # Deterministic eval inputs, no state change.
  assert first["num_examples"] == len(exp.dataset.sources["validation"])
  assert 0.0 <= first["accuracy"] <= 1.0 and np.isfinite(first["macro_f1"])
  assert {f"accuracy_{m}" for m in exp.modalities} <= set(first)
  k = exp.info.num_classes
  assert np.asarray(first["confusion_matrix"]).shape == (k, k)
  return first


def _check_train_augments_eval_does_not(exp, modality):
  """Train preprocessing draws new inputs per rng; eval preprocessing is fixed."""
  example = exp.dataset.sources["train"][0]
  aug = exp.dataset.preprocess[True]
  a = aug(example, np.random.default_rng(1))[modality]
  b = aug(example, np.random.default_rng(2))[modality]
  assert a.shape == tuple(exp.info.shapes[modality]) and not np.array_equal(a, b)
  plain = exp.dataset.preprocess[False]
  np.testing.assert_array_equal(plain(example, np.random.default_rng(1))[modality],
                                plain(example, np.random.default_rng(2))[modality])


# ---------------------------------------------------------------------------- CREMA-D ---


def test_cremad_frames_layout_trains_and_evaluates(tmp_path):
  manual = tmp_path / "CREMA-D"
  names = fx.cremad_clip_names(actors=(1001, 1002, 1003, 1004), per_actor=4)  # 16 clips.
  fx.make_cremad_frames(str(manual), names, frames=4)
  cfg = _config(cremad_config, "joint,smoke", **{
      "data.data_dir": str(tmp_path / "tfds"), "data.manual_dir": str(manual),
      "data.image_size": 32, "data.num_frames": 2})
  cremad.prepare(cfg.data)
  exp = train.Experiment(cfg)
  assert exp.info.shapes == {"audio": (257, 188, 1), "visual": (2, 32, 32, 3)}
  assert exp.info.num_classes == 6
  _check_train_augments_eval_does_not(exp, "visual")
  _train_two_steps_and_evaluate(exp)


# --------------------------------------------------------------------------- CMU-MOSI ---


@pytest.fixture(scope="module")
def mosi_data_dir(tmp_path_factory):
  src = tmp_path_factory.mktemp("mosi_src")
  fx.make_mosi_pickle(str(src / "mosi_data.pkl"), sizes={"train": 16, "valid": 8, "test": 8},
                      T=6, dims={"vision": 5, "audio": 4, "text": 7})
  data_dir = str(tmp_path_factory.mktemp("mosi_tfds"))
  cmu_mosi.prepare(ml_collections.ConfigDict(dict(manual_dir=str(src), data_dir=data_dir)))
  return data_dir


@functools.lru_cache(maxsize=None)
def _mosi_experiment(data_dir: str, method: str) -> train.Experiment:
  """One Experiment per method, shared by the tests (its step compiles once)."""
  cfg = _config(cmu_mosi_config, f"{method},smoke", **{"data.data_dir": data_dir})
  for spec in cfg.model.encoders.values():
    spec.update(TINY_TRANSFORMER)
  return train.Experiment(cfg)


def test_cmu_mosi_trains_and_evaluates(mosi_data_dir):
  exp = _mosi_experiment(mosi_data_dir, "joint")
  assert exp.modalities == ("audio", "visual", "text")
  assert exp.info.shapes == {"audio": (6, 4), "visual": (6, 5), "text": (6, 7)}
  res = _train_two_steps_and_evaluate(exp)
  assert "f1" in res  # Binary sentiment: binary F1 besides macro-F1.
  # Features are used as stored: train and eval preprocessing agree.
  example = exp.dataset.sources["train"][0]
  chex.assert_trees_all_equal(exp.dataset.preprocess[True](example, np.random.default_rng(0)),
                              exp.dataset.preprocess[False](example, None))


@pytest.mark.parametrize("method", MOSI_METHODS)
def test_cmu_mosi_every_method_one_step(mosi_data_dir, method):
  exp = _mosi_experiment(mosi_data_dir, method)
  state = exp.init_state()
  params0 = jax.device_get(state.params)
  state, metrics = exp.train_step(state, next(iter(exp.train_batches(0))))
  _check_metrics(exp, metrics)
  params1 = jax.device_get(state.params)
  for m in exp.modalities:  # All three Transformer encoders are trained.
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), params0[f"encoder_{m}"],
                           params1[f"encoder_{m}"])
    assert any(jax.tree.leaves(changed)), (method, m)
  if method == "ogm_ge":  # Modulation reaches the Transformers' kernels (M = 3).
    assert exp.config.optim.kernel_filter == "all_kernels"
    host = jax.device_get(metrics)
    coeffs = sorted(float(host[f"coeff_{m}"]) for m in exp.modalities)
    # The weakest branch keeps 1; the two others are compared with it and scaled down.
    assert coeffs[2] == 1.0 and 0.0 < coeffs[0] <= coeffs[1] < 1.0, coeffs


# -------------------------------------------------------------------------- AV-digits ---


def test_av_digits_trains_and_evaluates(tmp_path):
  manual = _write_fake_fsdd(str(tmp_path / "fsdd"), speakers=("alice",))
  cfg = _config(av_digits_config, "joint,smoke", **{
      "data.data_dir": str(tmp_path / "tfds"), "data.image_size": 16})
  av_digits.prepare(manual, cfg.data.data_dir)
  exp = train.Experiment(cfg)
  assert exp.info.shapes == {"audio": (129, 126, 1), "visual": (1, 16, 16, 1)}
  assert exp.info.num_classes == 10
  _check_train_augments_eval_does_not(exp, "visual")
  _train_two_steps_and_evaluate(exp)


# ----------------------------------------------------------------------------- folder ---


def test_folder_format_trains_and_evaluates(tmp_path):
  rng = np.random.default_rng(0)

  def arrays(n):  # Rank-3 audio (2-D ResNet) and rank-4 uint8 frames (folded).
    return {"audio": rng.normal(size=(n, 16, 12, 1)).astype(np.float32),
            "visual": rng.integers(0, 255, size=(n, 2, 16, 16, 3)).astype(np.uint8),
            "label": rng.integers(0, 3, size=n)}

  folder.write_folder_dataset(str(tmp_path / "data"),
                              {"train": arrays(12), "validation": arrays(5), "test": arrays(4)},
                              ["a", "b", "c"], shard_size=5, standardize=True)
  exp = train.Experiment(_config(folder_config, "joint,smoke",
                                 **{"data.data_dir": str(tmp_path / "data")}))
  assert exp.info.shapes == {"audio": (16, 12, 1), "visual": (2, 16, 16, 3)}
  res = _train_two_steps_and_evaluate(exp)
  assert res["num_examples"] == 5  # Padded to the eval batch of 8, padding masked out.
  # Summaries and report tables name it by its directory, not the format's name.
  assert exp.info.name == "folder:data"


def test_folder_sequence_and_vector_modalities_get_default_encoders(tmp_path):
  """[L, D] and [D] modalities train without an encoder config (Transformer, MLP)."""
  rng = np.random.default_rng(1)

  def arrays(n):
    return {"audio": rng.normal(size=(n, 16, 12, 1)).astype(np.float32),
            "text": rng.normal(size=(n, 6, 5)).astype(np.float32),
            "tabular": rng.normal(size=(n, 7)).astype(np.float32),
            "label": rng.integers(0, 3, size=n)}

  folder.write_folder_dataset(str(tmp_path / "data"),
                              {"train": arrays(12), "validation": arrays(5), "test": arrays(4)},
                              ["a", "b", "c"], shard_size=6)
  # RedReg: co-information needs one pooled size, which the defaults give (Eq.22-23).
  exp = train.Experiment(_config(folder_config, "redreg,smoke",
                                 **{"data.data_dir": str(tmp_path / "data")}))
  state = exp.init_state()
  enc = state.params
  assert "block_0" in enc["encoder_text"] and "pos_embedding" in enc["encoder_text"]
  assert set(enc["encoder_tabular"]) == {"dense1", "dense2"}
  feats = exp.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                          {m: np.zeros((2,) + exp.info.shapes[m], np.float32)
                           for m in exp.modalities}, train=False)["features"]
  assert {m: f.shape for m, f in feats.items()} == {m: (2, 32) for m in exp.modalities}
  _train_two_steps_and_evaluate(exp)


def test_folder_rank_without_default_encoder_names_the_modality(tmp_path):
  rng = np.random.default_rng(2)
  arrays = lambda n: {"audio": rng.normal(size=(n, 16, 12, 1)).astype(np.float32),
                      "volume": rng.normal(size=(n, 2, 3, 4, 5, 1)).astype(np.float32),
                      "label": rng.integers(0, 3, size=n)}
  folder.write_folder_dataset(str(tmp_path / "data"),
                              {"train": arrays(8), "validation": arrays(4), "test": arrays(4)},
                              ["a", "b", "c"])
  with pytest.raises(ValueError, match=r"modality 'volume'.*config.model.encoders.volume"):
    train.Experiment(_config(folder_config, "joint,smoke",
                             **{"data.data_dir": str(tmp_path / "data")}))


def test_subset_source_and_seeded_subset():
  src = [{"x": np.float32(i)} for i in range(10)]
  idx = input_pipeline.seeded_subset(10, 0.3, seed=1)
  assert len(idx) == 3 and list(idx) == sorted(idx)
  np.testing.assert_array_equal(idx, input_pipeline.seeded_subset(10, 0.3, seed=1))
  sub = input_pipeline.SubsetSource(src, idx)
  assert len(sub) == 3 and [sub[i]["x"] for i in range(3)] == [float(i) for i in idx]
  with pytest.raises(ValueError, match=r"\[0, 10\)"):
    input_pipeline.SubsetSource(src, [10])
  with pytest.raises(ValueError, match="fraction"):
    input_pipeline.seeded_subset(10, 0.0, seed=0)
