r"""Your own paired data in the `folder` format (manifest.json + .npz shards; data/folder.py).

  python launch.py --config=configs/folder.py:redreg --config.data.data_dir=/path/to/folder \
      --workdir=runs/mydata/redreg

Modalities, shapes and classes come from the manifest. Each modality's encoder follows
its per-example rank (`models.default_encoder_spec`): [H, W, C] a 2-D ResNet-18,
[T, H, W, C] a ResNet-18 with frames folded into the batch, [L, D] sequences a 2-layer
Transformer, [D] vectors a 2-layer MLP; all pool to 512 * width features, so every method
(RedReg's co-information included) runs. Set `--config.model.encoders.<m>` to choose
another (see configs/cmu_mosi.py).
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
