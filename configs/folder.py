r"""Your own paired data in the `folder` format (manifest.json + .npz shards; data/folder.py).

  python launch.py --config=configs/folder.py:redreg --config.data.data_dir=/path/to/folder \
      --workdir=runs/mydata/redreg

Modalities, shapes and classes come from the manifest. Arrays of rank 3 ([H, W, C]) use a
2-D ResNet-18; rank 4 ([T, H, W, C]) fold frames into the batch.
"""

import ml_collections

from redreg_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method="joint", smoke=False)
  c = config_lib.base_config(arg.method)
  c.data = ml_collections.ConfigDict(dict(name="folder", data_dir="", standardize=True))
  c.model.width = 0.25
  c.batch_size = 64
  c.num_epochs = 20
  c.optim.lr = 0.01
  c.optim.lr_decay_epochs = (15,)
  if arg.smoke:
    c.num_epochs = 2
    c.model.width = 0.125
  return c
