"""CG-MNIST builder on tiny IDX fixtures written in the real format (raw and .gz)."""

import gzip
import os

import chex
import ml_collections
import numpy as np
import pytest

from configs import cg_mnist as cg_mnist_config
from data import cg_mnist
from data import prepare as prep
from redreg_jax import train

N_TRAIN, N_TEST = 40, 20


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
  """The IDX encoding of a uint8 array: big-endian magic, dims, then the data."""
  header = magic.to_bytes(4, 'big') + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def _write(path: str, payload: bytes, gz: bool) -> None:
  if gz:
    with gzip.open(path + '.gz', 'wb') as f:
      f.write(payload)
  else:
    with open(path, 'wb') as f:
      f.write(payload)


def _arrays(seed: int = 0):
  """Digit-like images (sparse strokes on black) with balanced labels 0-9."""
  rng = np.random.default_rng(seed)
  out = {}
  for part, n in (('train', N_TRAIN), ('test', N_TEST)):
    strokes = rng.random((n, 28, 28)) < 0.3
    images = np.where(strokes, rng.integers(64, 256, (n, 28, 28)), 0).astype(np.uint8)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    out[part] = (images, labels)
  return out


def write_idx_folder(root: str, gz: bool, arrays=None) -> str:
  """The four MNIST-format files in `root` (gzipped or raw)."""
  os.makedirs(root, exist_ok=True)
  arrays = arrays or _arrays()
  for part in ('train', 'test'):
    images, labels = arrays[part]
    _write(os.path.join(root, cg_mnist.FILES[(part, 'images')]),
           _idx_bytes(images, cg_mnist.IMAGES_MAGIC), gz)
    _write(os.path.join(root, cg_mnist.FILES[(part, 'labels')]),
           _idx_bytes(labels, cg_mnist.LABELS_MAGIC), gz)
  return root


def _cfg(manual, data_dir, **kw):
  return ml_collections.ConfigDict(dict(manual_dir=str(manual), data_dir=str(data_dir), **kw))


def _read(cfg, split):
  src = cg_mnist.load_split(cfg, split)
  rows = [src[i] for i in range(len(src))]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """One build from .gz files and one from raw files of the same arrays."""
  out = {}
  for gz in (True, False):
    manual = write_idx_folder(str(tmp_path_factory.mktemp('gz' if gz else 'raw')), gz)
    cfg = _cfg(manual, tmp_path_factory.mktemp('tfds'))
    cg_mnist.prepare(cfg)
    out[gz] = (cfg, {s: _read(cfg, s) for s in cg_mnist.SPLITS})
  return out


def _estimated_colors(data):
  """c_i per image from its strokes: sum(color) / sum(gray) per channel."""
  gray = data['gray'].astype(np.float64).sum(axis=(1, 2))  # [N, 1]
  return data['color'].astype(np.float64).sum(axis=(1, 2)) / gray


def test_splits_shapes_and_dtypes(built):
  _, data = built[True]
  assert {s: d['label'].size for s, d in data.items()} == {
      'train': 36, 'validation': 4, 'test': 20}
  for d in data.values():
    assert d['gray'].shape[1:] == (28, 28, 1) and d['gray'].dtype == np.uint8
    assert d['color'].shape[1:] == (28, 28, 3) and d['color'].dtype == np.uint8
    assert d['label'].dtype == np.int32 and set(d['label']) <= set(range(10))
  ids = np.concatenate([d['id'] for d in data.values()])
  assert np.unique(ids).size == ids.size  # Unique across splits.
  # Validation is carved from the train files; the carve is disjoint from train.
  assert not set(data['train']['source_index']) & set(data['validation']['source_index'])
  assert sorted(np.concatenate([data['train']['source_index'],
                                data['validation']['source_index']])) == list(range(N_TRAIN))


def test_gray_is_the_source_image_and_color_paints_its_strokes(built):
  _, data = built[True]
  src = _arrays()
  for split, d in data.items():
    images, labels = src['test' if split == 'test' else 'train']
    np.testing.assert_array_equal(d['gray'][..., 0], images[d['source_index']])
    np.testing.assert_array_equal(d['label'], labels[d['source_index']])
    # Only the foreground is coloured: background pixels stay black in every channel.
    assert np.all(d['color'][d['gray'][..., 0] == 0] == 0)


def test_raw_and_gzipped_files_give_the_same_build(built):
  for split in cg_mnist.SPLITS:
    chex.assert_trees_all_equal(built[True][1][split], built[False][1][split])


def test_stored_colours_are_the_pure_function_of_the_seed(built):
  _, data = built[True]
  src = _arrays()
  expect = cg_mnist.build_splits(src['train'], src['test'], dict(cg_mnist.STORAGE_DEFAULTS))
  for split, d in data.items():
    for key in ('color', 'color_class', 'source_index'):
      np.testing.assert_array_equal(d[key], expect[split][key], err_msg=f'{split} {key}')
  other = cg_mnist.build_splits(src['train'], src['test'],
                                dict(cg_mnist.STORAGE_DEFAULTS, color_seed=1))
  assert not np.array_equal(other['test']['color'], expect['test']['color'])


def test_train_colour_is_the_class_colour(built):
  _, data = built[True]
  d = data['train']
  np.testing.assert_array_equal(d['color_class'], d['label'])
  est = _estimated_colors(d)
  # Nearest mean colour recovers the class for most images (jitter std 0.17).
  dist = np.linalg.norm(est[:, None, :] - cg_mnist.MEAN_COLORS[None], axis=-1)
  assert (dist.argmin(axis=1) == d['label']).mean() >= 0.8
  for k in range(10):
    mean = est[d['label'] == k].mean(axis=0)
    assert np.abs(mean - cg_mnist.MEAN_COLORS[k]).max() < 0.3, (k, mean)


def test_colour_statistics_at_scale():
  """Class mean colours (train) and the colour-class correlation (validation/test)."""
  rng = np.random.default_rng(1)
  n = 6000
  images = np.full((n, 2, 2), 255, np.uint8)  # Flat strokes: the pixel is 255 * c_i.
  labels = rng.integers(0, 10, n)
  test = (images[:3000], labels[:3000])
  sigma = np.sqrt(0.03)
  draws = np.clip(cg_mnist.MEAN_COLORS[:, None, :] + sigma * rng.standard_normal(
      (10, 200000, 3)), 0, 1).mean(axis=1)  # E[clip(N(mean, 0.03), 0, 1)] per class.
  for corr in (0.1, 0.5, 1.0):
    out = cg_mnist.build_splits((images, labels), test,
                                dict(cg_mnist.STORAGE_DEFAULTS, test_color_correlation=corr))
    tr = out['train']
    np.testing.assert_array_equal(tr['color_class'], tr['label'])
    rgb = tr['color'][:, 0, 0, :] / 255.0
    for k in range(10):
      np.testing.assert_allclose(rgb[tr['label'] == k].mean(axis=0), draws[k], atol=0.03)
      # The jitter has variance 0.03 where the mean colour is not clipped (0 < mu < 1).
      inner = (cg_mnist.MEAN_COLORS[k] > 0) & (cg_mnist.MEAN_COLORS[k] < 1)
      if inner.any():
        var = rgb[tr['label'] == k][:, inner].var(axis=0)
        np.testing.assert_allclose(var, 0.03, rtol=0.3)
    for split in ('validation', 'test'):
      d = out[split]
      same = d['color_class'] == d['label']
      assert abs(same.mean() - corr) < 0.03, (split, corr, same.mean())
      if corr < 1:  # The rest is spread evenly over the 9 other classes' colours.
        offsets = (d['color_class'][~same] - d['label'][~same]) % 10
        counts = np.bincount(offsets, minlength=10)[1:]
        assert counts.min() > 0.6 * counts.mean(), counts


def test_correlation_knob_names_its_own_build(built, tmp_path):
  cfg0, _ = built[True]
  cfg = _cfg(cfg0.manual_dir, tmp_path / 'tfds', test_color_correlation=1.0)
  b = cg_mnist.prepare(cfg)
  assert b.builder_config.name == 'test_color_correlation-1.0'
  for split in ('validation', 'test'):
    d = _read(cfg, split)
    np.testing.assert_array_equal(d['color_class'], d['label'])
  # The default build is untouched and still found by name.
  assert cg_mnist.builder(cfg0).builder_config.name == 'default'


def test_subsamples_are_seeded_and_test_is_whole(built):
  cfg0, _ = built[True]
  cfg = ml_collections.ConfigDict(dict(cfg0, train_subsample=10, validation_subsample=2))
  a = cg_mnist.load_split(cfg, 'train')
  assert len(a) == 10 and len(cg_mnist.load_split(cfg, 'validation')) == 2
  b = cg_mnist.load_split(cfg, 'train')
  assert [a[i]['id'] for i in range(10)] == [b[i]['id'] for i in range(10)]
  assert len(cg_mnist.load_split(cfg, 'test')) == N_TEST


def test_preprocess_standardises_both_modalities(built):
  cfg, _ = built[True]
  ex = cg_mnist.load_split(cfg, 'test')[0]
  out = cg_mnist.make_preprocess(cfg, False)(ex, None)
  assert out['gray'].shape == (28, 28, 1) and out['gray'].dtype == np.float32
  assert out['color'].shape == (28, 28, 3) and out['color'].dtype == np.float32
  np.testing.assert_allclose(out['gray'], (ex['gray'] / 255.0 - 0.1307) / 0.3081, atol=1e-5)
  np.testing.assert_allclose(out['color'][0, 0], -cg_mnist.COLOR_MEAN / cg_mnist.COLOR_STD,
                             atol=1e-5)  # A black background pixel.
  assert out['label'] == ex['label'] and out['label'].dtype == np.int32
  chex.assert_trees_all_equal(out, cg_mnist.make_preprocess(cfg, True)(
      ex, np.random.default_rng(0)))


def test_not_prepared_error_says_how(tmp_path):
  with pytest.raises(FileNotFoundError, match='python -m data.prepare cg_mnist'):
    cg_mnist.load_split(_cfg(tmp_path, tmp_path / 'none'), 'train')


# -------------------------------------------------------------------- bad files ---


def _bad_folder(tmp_path, gz=False):
  return write_idx_folder(str(tmp_path / 'src'), gz)


def _one_line_error(manual, data_dir, exc=(prep.BadFileError, FileNotFoundError)):
  with pytest.raises(exc) as info:
    cg_mnist.prepare(_cfg(manual, data_dir))
  msg = str(info.value)
  assert '\n' not in msg, msg
  return msg


def test_missing_file_is_named(tmp_path):
  manual = _bad_folder(tmp_path)
  os.remove(os.path.join(manual, 't10k-labels-idx1-ubyte'))
  msg = _one_line_error(manual, tmp_path / 'tfds')
  assert 't10k-labels-idx1-ubyte' in msg and 'missing' in msg


def test_wrong_magic_is_named(tmp_path):
  manual = _bad_folder(tmp_path)
  path = os.path.join(manual, 'train-labels-idx1-ubyte')
  images = _arrays()['train'][0]
  with open(path, 'wb') as f:  # An images file where the labels belong.
    f.write(_idx_bytes(images, cg_mnist.IMAGES_MAGIC))
  msg = _one_line_error(manual, tmp_path / 'tfds')
  assert path in msg and 'magic 0x00000803, expected 0x00000801' in msg


@pytest.mark.parametrize('gz', [False, True])
def test_truncated_file_is_named(tmp_path, gz):
  manual = _bad_folder(tmp_path, gz)
  path = os.path.join(manual, 'train-images-idx3-ubyte' + ('.gz' if gz else ''))
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  msg = _one_line_error(manual, tmp_path / 'tfds')
  assert path in msg and 'truncated' in msg


def test_corrupt_gzip_is_named(tmp_path):
  manual = _bad_folder(tmp_path, gz=True)
  path = os.path.join(manual, 't10k-images-idx3-ubyte.gz')
  with open(path, 'wb') as f:
    f.write(b'this is not gzip data at all')
  msg = _one_line_error(manual, tmp_path / 'tfds')
  assert path in msg and 'corrupt' in msg


def test_count_mismatch_and_bad_labels_are_named(tmp_path):
  arrays = _arrays()
  images, labels = arrays['test']
  manual = write_idx_folder(str(tmp_path / 'a'), False, {**arrays, 'test': (images, labels[:-1])})
  msg = _one_line_error(manual, tmp_path / 'tfds_a')
  assert '20 images' in msg and '19 labels' in msg
  manual = write_idx_folder(str(tmp_path / 'b'), False,
                            {**arrays, 'test': (images, labels + 10)})
  msg = _one_line_error(manual, tmp_path / 'tfds_b')
  assert 't10k-labels-idx1-ubyte' in msg and 'labels 0-9' in msg


def test_prepare_cli_prints_one_error_line(tmp_path, capsys):
  manual = _bad_folder(tmp_path)
  os.remove(os.path.join(manual, 'train-images-idx3-ubyte'))
  rc = prep.main(['cg_mnist', f'--manual_dir={manual}', f'--data_dir={tmp_path / "tfds"}'])
  err = capsys.readouterr().err.strip()
  assert rc == 1 and err.count('\n') == 0 and 'train-images-idx3-ubyte' in err
  with pytest.raises(SystemExit, match='train-images-idx3-ubyte'):
    cg_mnist.main([f'--manual_dir={manual}', f'--data_dir={tmp_path / "tfds"}'])


def test_module_cli_prepares(tmp_path, capsys):
  manual = write_idx_folder(str(tmp_path / 'src'), True)
  cg_mnist.main([f'--manual_dir={manual}', f'--data_dir={tmp_path / "tfds"}',
                 '--test_color_correlation=0.5'])
  assert "'test': 20" in capsys.readouterr().out
  cfg = _cfg(manual, tmp_path / 'tfds', test_color_correlation=0.5)
  assert len(cg_mnist.load_split(cfg, 'validation')) == 4


# -------------------------------------------------------------------- trainer ---


def test_trains_and_evaluates_through_the_trainer(built):
  cfg0, _ = built[True]
  c = cg_mnist_config.get_config('joint,tiny')
  c.data.data_dir = cfg0.data_dir
  exp = train.Experiment(c)
  assert exp.info.shapes == {'gray': (28, 28, 1), 'color': (28, 28, 3)}
  assert exp.modalities == ('gray', 'color') and exp.steps_per_epoch == 4
  state = exp.init_state()
  for epoch in (0, 1):
    batch = next(iter(exp.train_batches(epoch)))
    assert batch['gray'].shape == (8, 28, 28, 1) and batch['color'].shape == (8, 28, 28, 3)
    state, metrics = exp.train_step(state, batch)
    host = metrics if isinstance(metrics, dict) else dict(metrics)
    assert np.isfinite(float(host['loss'])) and bool(host['finite'])
  res = exp.evaluate(state, 'validation')
  assert res['num_examples'] == 4 and 0.0 <= res['accuracy'] <= 1.0
  assert {'accuracy_gray', 'accuracy_color'} <= set(res)


def test_redreg_one_step_with_conv4_encoders(built):
  """Both conv4 encoders pool to one size, so RedReg's co-information (Eq.22-23) runs."""
  cfg0, _ = built[True]
  c = cg_mnist_config.get_config('redreg,tiny')
  c.data.data_dir = cfg0.data_dir
  exp = train.Experiment(c)
  state, metrics = exp.train_step(exp.init_state(), next(iter(exp.train_batches(0))))
  assert int(state.step) == 1 and np.isfinite(float(metrics['loss']))
