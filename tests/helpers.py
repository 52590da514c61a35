"""Tiny configs for tests: the real code paths at toy sizes."""

import ml_collections

from configs import synthetic as synthetic_config


def tiny_config(method: str = "joint", **overrides) -> ml_collections.ConfigDict:
  """A 4-channel ResNet-18 on 16x16 inputs, 64 training examples, 2 epochs."""
  c = synthetic_config.get_config(f"{method},smoke")
  c.data.update(num_train=64, num_validation=32, num_test=32, audio_freq=16, audio_time=16,
                frames=1, image_size=16, num_classes=4)
  c.model.width = 1 / 16
  c.batch_size = 16
  c.eval_batch_size = 32
  c.num_epochs = 2
  c.optim.lr_decay_epochs = (1,)
  c.train.progress_every = 1000
  c.train.input_threads = 1
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c
