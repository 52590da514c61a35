"""synthetic_av: determinism and what each knob does."""

import dataclasses

import numpy as np
import pytest

from redreg_jax import synthetic

SMALL = synthetic.SyntheticAVConfig(num_train=300, num_validation=20, num_test=20,
                                    audio_freq=24, audio_time=16, frames=2, image_size=12)


def _gen(**kw):
  return synthetic.generate_split(dataclasses.replace(SMALL, **kw), "train")


def test_shapes_dtypes_and_determinism():
  a, b = _gen(), _gen()
  assert a["audio"].shape == (300, 24, 16, 1) and a["audio"].dtype == np.float32
  assert a["visual"].shape == (300, 2, 12, 12, 3) and a["visual"].dtype == np.float32
  assert a["label"].dtype == np.int32 and set(np.unique(a["label"])) == set(range(6))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  c = _gen(seed=1)
  assert not np.array_equal(a["audio"], c["audio"])


def test_splits_differ():
  cfg = SMALL
  tr, te = synthetic.generate_split(cfg, "train"), synthetic.generate_split(cfg, "test")
  assert not np.array_equal(tr["audio"][:20], te["audio"])


def _signal_power(x, kind_mask):
  # Per-example variance above the unit noise floor.
  return float(np.mean(np.var(x[kind_mask].reshape(kind_mask.sum(), -1), axis=1) - 1.0))


def test_snr_knobs_scale_signal():
  lo, hi = _gen(snr_audio=0.5, snr_visual=0.2), _gen(snr_audio=2.0, snr_visual=1.0)
  shared_lo, shared_hi = lo["kind"] == 0, hi["kind"] == 0
  assert _signal_power(hi["audio"], shared_hi) > 4 * _signal_power(lo["audio"], shared_lo) > 0
  assert _signal_power(hi["visual"], shared_hi) > 4 * _signal_power(lo["visual"], shared_lo) > 0
  zero = _gen(snr_audio=0.0)
  assert abs(_signal_power(zero["audio"], np.ones(300, bool))) < 0.05


def test_private_fractions():
  d = _gen(private_audio=0.3, private_visual=0.2)
  frac = np.bincount(d["kind"], minlength=3) / 300
  np.testing.assert_allclose(frac, [0.5, 0.3, 0.2], atol=0.08)
  # Audio-private examples carry no visual signal; visual-private none in audio.
  assert abs(_signal_power(d["visual"], d["kind"] == 1)) < 0.05
  assert abs(_signal_power(d["audio"], d["kind"] == 2)) < 0.05
  assert _signal_power(d["visual"], d["kind"] == 2) > 0.05
  all_shared = _gen(private_audio=0.0, private_visual=0.0)
  assert np.all(all_shared["kind"] == 0)


def test_size_knobs():
  d = _gen(num_classes=3, frames=3, image_size=8, audio_freq=20, audio_time=10)
  assert d["visual"].shape[1:] == (3, 8, 8, 3) and d["audio"].shape[1:] == (20, 10, 1)
  assert set(np.unique(d["label"])) == {0, 1, 2}


@pytest.mark.parametrize("bad,match", [
    (dict(private_audio=0.7, private_visual=0.5), "must be <= 1"),
    (dict(num_classes=1), "num_classes"),
    (dict(snr_visual=-1.0), "snr_visual"),
])
def test_bad_knobs_raise(bad, match):
  with pytest.raises(ValueError, match=match):
    _gen(**bad)


def test_unknown_field_raises():
  import ml_collections
  with pytest.raises(ValueError, match="Unknown synthetic_av field"):
    synthetic.config_from(ml_collections.ConfigDict(dict(name="synthetic_av", snr=1.0)))
