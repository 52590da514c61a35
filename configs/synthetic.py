r"""synthetic_av: the embedded default dataset (no files, no download).

  python launch.py --config=configs/synthetic.py:joint --workdir=/tmp/synth_joint
  python launch.py --config=configs/synthetic.py:redreg,smoke --workdir=/tmp/smoke

Methods: see `redreg_jax/methods.py` (joint, joint_star, redreg, redreg_star, ...).
`smoke` shrinks data, width and epochs to run in well under a minute on a CPU; `tiny`
shrinks further, for tests.
Audio dominates by construction (see `redreg_jax/synthetic.py`); the README's table
gives what each method reaches and the command that produced it.
"""

import ml_collections

from redreg_jax import config_lib
from redreg_jax import synthetic


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method="joint", smoke=False, tiny=False)
  c = config_lib.base_config(arg.method)
  c.data = ml_collections.ConfigDict(dict(name="synthetic_av",
                                          **vars(synthetic.SyntheticAVConfig())))
  c.model.width = 0.25          # 16-32-64-128 channels: a CPU-sized ResNet-18.
  c.num_epochs = 12
  c.batch_size = 64
  c.optim.lr = 0.01
  c.optim.lr_decay_epochs = (8,)
  c.train.progress_every = 20
  if arg.smoke:
    c.data.num_train, c.data.num_validation, c.data.num_test = 256, 64, 64
    c.model.width = 0.125
    c.num_epochs = 3
    c.batch_size = 32
    c.eval_batch_size = 64
    c.optim.lr_decay_epochs = (2,)
    c.train.progress_every = 8
    c.train.checkpoint_every_steps = 16
    if c.optim.get("warmup_epochs", 0) > 1:  # Let regulation act within 3 epochs
      c.optim.warmup_epochs = 1             # (a preset's shorter warm-up is kept).
    if "reinit_every" in c.optim:  # DRBML's H = 20 > 3 epochs: diagnose after each one.
      c.optim.reinit_every = 1
    if c.optim.get("reg_epochs", 0) > 1:  # PMR's entropy term in epoch 0 only (E_r
      c.optim.reg_epochs = 1              # is "the first few" of many epochs).
  if arg.tiny:  # For tests: the real code paths at toy sizes (a 4-channel ResNet-18 with
    # one basic block per stage: every stage, stride and projection; a faster compile).
    c.data.update(num_train=64, num_validation=32, num_test=32, audio_freq=16, audio_time=16,
                  frames=1, image_size=16, num_classes=4)
    c.model.width = 1 / 16
    c.model.resnet_blocks = 1
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_epochs = 2
    c.optim.lr_decay_epochs = (1,)
    c.train.progress_every = 1000
    c.train.input_threads = 1
    c.train.checkpoint_every_steps = 2
    c.train.probe_every_steps = 2
  return c
