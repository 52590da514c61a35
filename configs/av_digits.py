r"""AV-digits: spoken digits (FSDD recordings) paired with scikit-learn's 8x8 digit images.

  git clone https://github.com/Jakobovski/free-spoken-digit-dataset /path/to/fsdd
  python -m data.av_digits --manual_dir=/path/to/fsdd --data_dir=~/tensorflow_datasets
  python launch.py --config=configs/av_digits.py:redreg --workdir=runs/av_digits/redreg

Audio: 1 s log-spectrogram (129 x 126); visual: the 8x8 image upsampled to 32x32 with
Gaussian noise (std `visual_noise_std`) and a random occluding square
(`visual_occlusion` of the area) that make it the weaker modality.

The 6-epoch budget rescales the epoch-counted schedules of DRBML (diagnose every 2
epochs), G-Blending (super-epochs of 2) and PMR (entropy term in epochs 0-1); every other
method runs its defaults.
"""

import ml_collections

from redreg_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method="joint", smoke=False)
  c = config_lib.base_config(arg.method)
  c.data = ml_collections.ConfigDict(dict(
      name="av_digits", data_dir="~/tensorflow_datasets", pair_seed=0, val_fraction=0.1,
      image_size=32, interpolation="nearest", visual_noise_std=1.0, visual_occlusion=0.25,
      audio_normalize=True, eval_seed=0))
  # CPU-scale protocol of the README's AV-digits table: a 1/8-width ResNet-18 (8-16-32-64
  # channels) for 6 epochs, about 1.5 min per joint run on 2 CPU cores.
  c.model.width = 0.125
  c.batch_size = 64
  c.num_epochs = 6
  c.optim.lr = 0.01
  c.optim.lr_decay_epochs = (4,)
  # Epoch-counted schedules of the newer methods, scaled to the 6-epoch budget (their
  # papers count in tens of epochs; the methods' own defaults are unchanged):
  if "reinit_every" in c.optim:  # DRBML H = 20: diagnose after epochs 0, 2 and 4.
    c.optim.reinit_every = 2
  if "super_epoch" in c.optim:  # G-Blending: super-epochs of 2 (estimates at 0, 2, 4).
    c.optim.update(super_epoch=2, first_super_epoch=2)
  if c.optim.get("reg_epochs", 0) > 2:  # PMR's entropy term E_r in the first 2 epochs.
    c.optim.reg_epochs = 2
  if arg.smoke:
    c.num_epochs = 2
    c.model.width = 0.125
  return c
