r"""Kinetics-Sounds (31 classes, GeWu split) with the papers' settings (docs/reproducing.md §Data).

  python -m data.prepare kinetics_sounds --manual_dir=/path/to/ks --data_dir=~/tensorflow_datasets
  python launch.py --config=configs/kinetics_sounds.py:redreg --workdir=runs/ks/redreg

Expected (RedReg paper, not yet reproduced here): joint 64.27, RedReg 71.13 (test %).
"""

import ml_collections

from redreg_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method="redreg", smoke=False)
  c = config_lib.base_config(arg.method)
  c.data = ml_collections.ConfigDict(dict(
      name="kinetics_sounds", data_dir="~/tensorflow_datasets", manual_dir="", seed=0,
      validation_fraction=0.1, num_frames=3, image_size=224, consistent_crop=False))
  c.model.width = 1.0
  c.batch_size = 64
  c.num_epochs = 80
  c.optim.lr = 0.002
  c.optim.lr_decay_epochs = (40,)
  c.train.input_threads = 8
  if "reinit_lambda" in c.optim:  # DRBML paper Sec.4.2 on Kinetics-Sounds: lambda 7.
    c.optim.reinit_lambda = 7.0
  if arg.smoke:
    c.num_epochs = 3
    c.model.width = 0.125
    c.data.image_size = 112
  return c
