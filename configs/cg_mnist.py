r"""CG-MNIST (gray + color, 10 classes) with PMR's / MMPareto's encoder and protocol.

  python -m data.prepare cg_mnist --manual_dir=/path/to/mnist --data_dir=~/tensorflow_datasets
  python launch.py --config=configs/cg_mnist.py:joint --workdir=runs/cg_mnist/joint
  python launch.py --config=configs/cg_mnist.py:joint,cpu --workdir=runs/cg_mnist_cpu/joint

`manual_dir` holds the four MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, ...;
see data/cg_mnist.py). Colour is class-determined in train and independent of the class
in validation and test, so joint training that leans on colour fails at test time.

Papers' protocol (default): the 4-conv encoder of PMR's code for each modality
(`conv4`, pooled size 512), concat fusion, SGD momentum 0.9, weight decay 1e-4, batch 64,
lr 1e-3 x0.1 at epoch 70 of 100 (PMR §5.2 and its released CGMNIST commands; MMPareto
appendix B: SGD 0.9, lr 1e-3). Published test accuracy on MNIST: PMR Table 1 concat 58.4,
PMR 77.2, gray only 99.3, colour only 60.4; MMPareto Table 3 one joint loss 60.50,
multimodal + unimodal 75.68, MMPareto 81.88.

`cpu`: the budget of one ~2-minute run on a 2-core CPU (8,000 seeded training examples,
2,000 of validation, 3 epochs, lr 0.01 x0.1 at epoch 2, method warm-ups and PMR's
entropy epochs E_r of 1 epoch, DRBML diagnosing after every epoch: with its H = 20,
`drbml` would re-initialise once, after epoch 0, and `drbml_official`, which skips epoch
0, never). On Fashion-MNIST (seed 0, test %): `joint` 16.2 (gray branch 11.8, colour
branch 10.9), `joint` on gray alone 74.9, on colour alone 16.9: the colour shortcut wins.
G-Blending under `cpu`: the paper's super-epochs (10, then 5) do not fit 3 epochs, so
`gblending` re-estimates its weights at every epoch (super-epochs of 1: starts 0, 1, 2,
each estimate predicting the epoch it precedes), and each head's copy trains 40 of an
epoch's 125 steps: the three copies of an estimate cost about one epoch, and with its
inference passes the run about 2.5 times `joint`'s (counted, not timed).
`gblending_offline` keeps its one estimate at epoch 0, each copy 3 epochs of 40 steps.
`smoke` shrinks further (~1 min); `tiny` is for tests (toy encoder, any tiny fixture).
"""

import ml_collections

from redreg_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, method="joint", smoke=False, tiny=False, cpu=False)
  c = config_lib.base_config(arg.method)
  c.data = ml_collections.ConfigDict(dict(
      name="cg_mnist", data_dir="~/tensorflow_datasets", color_var=0.03,
      test_color_correlation=0.1, validation_fraction=0.1, color_seed=0, train_subsample=0,
      validation_subsample=0))
  # concat (base_config), as the papers; Greedy's own intermediate fusion for greedy.
  c.model.width = 1.0
  c.model.encoders = ml_collections.ConfigDict({
      m: {"kind": "conv4", "dim": 512} for m in ("gray", "color")})
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_epochs = 100
  c.optim.lr = 1e-3
  c.optim.lr_decay_epochs = (70,)
  c.optim.lr_decay_factor = 0.1
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.train.progress_every = 100
  if arg.cpu:  # Budget only: 8,000 training examples x 3 epochs (375 steps), 2,000 for
    # validation, lr 0.01 (x0.1 for the last epoch) so gray alone gets far within them.
    c.data.train_subsample = 8000
    c.data.validation_subsample = 2000
    c.num_epochs = 3
    c.optim.lr = 0.01
    c.optim.lr_decay_epochs = (2,)
    c.train.progress_every = 50
    if c.optim.get("warmup_epochs", 0) > 1:  # A preset's shorter warm-up is kept.
      c.optim.warmup_epochs = 1
    if "reinit_every" in c.optim:  # DRBML's H = 20 > 3 epochs: diagnose after each one.
      c.optim.reinit_every = 1
    if "super_epoch" in c.optim:  # G-Blending: 1-epoch super-epochs, copies of 40 steps.
      c.optim.update(super_epoch=1, first_super_epoch=1, estimate_steps=40)
    if c.optim.get("reg_epochs", 0) > 1:  # PMR's E_r: the entropy term in epoch 0 only.
      c.optim.reg_epochs = 1
  if arg.smoke:
    c.data.train_subsample = 1024
    c.data.validation_subsample = 512
    c.num_epochs = 2
    c.optim.lr = 0.01
    c.optim.lr_decay_epochs = (1,)
    c.train.progress_every = 8
    c.train.checkpoint_every_steps = 16
    if c.optim.get("warmup_epochs", 0) > 1:  # A preset's shorter warm-up is kept.
      c.optim.warmup_epochs = 1
    if "reinit_every" in c.optim:  # DRBML within 2 epochs.
      c.optim.reinit_every = 1
    if c.optim.get("reg_epochs", 0) > 1:  # PMR's E_r: the entropy term in epoch 0 only.
      c.optim.reg_epochs = 1
  if arg.tiny:  # For tests: the real code paths at toy sizes (8-8-16-16 channels).
    c.model.width = 0.25
    for spec in c.model.encoders.values():
      spec.dim = 16
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_epochs = 2
    c.optim.lr_decay_epochs = (1,)
    c.train.progress_every = 1000
    c.train.input_threads = 1
    c.train.device_prefetch = 1
    c.train.checkpoint_every_steps = 2
    c.train.probe_every_steps = 2
  return c
