r"""CREMA-D (audio + visual, 6 emotions) with the papers' settings (docs/methods.md §RedReg, §6).

Prepare the data once (see data/cremad.py for the folder layout):
  python -m data.prepare cremad --manual_dir=/path/to/CREMA-D --data_dir=~/tensorflow_datasets
Then:
  python launch.py --config=configs/cremad.py:redreg --workdir=runs/cremad/redreg
  python launch.py --config=configs/cremad.py:ogm_ge --workdir=runs/cremad/ogm_ge

Paper settings: ResNet-18 from scratch, SGD momentum 0.9, lr 0.002, batch 64, weight decay
1e-4; the official code trains 80 epochs with lr x0.1 at epoch 40. Expected (RedReg paper,
not yet reproduced here): joint 66.47, OGM-GE 69.11, InfoReg 71.76, RedReg 73.86 (test %).
"""

import ml_collections

from redreg_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method="redreg", smoke=False)
  c = config_lib.base_config(arg.method)
  c.data = ml_collections.ConfigDict(dict(
      name="cremad", data_dir="~/tensorflow_datasets", manual_dir="", split="random",
      seed=0, validation_fraction=0.1, test_fraction=744 / 7442, csv_dir="", num_frames=3,
      image_size=224, consistent_crop=False, fps=3, frame_short_side=0, jpeg_quality=95))
  c.model.width = 1.0
  c.batch_size = 64
  c.num_epochs = 80
  c.optim.lr = 0.002
  c.optim.lr_decay_epochs = (40,)
  c.train.progress_every = 50
  c.train.input_threads = 8
  if arg.smoke:
    c.num_epochs = 3
    c.model.width = 0.125
    c.data.image_size = 112
  return c
