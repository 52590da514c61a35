"""Datasets and batching: random-access sources -> grain pipelines -> global device arrays.

Every dataset offers, per split, a random-access *source* (`len` + `__getitem__`
returning a dict of numpy arrays keyed by modality plus `'label'`) and optional
per-example preprocessing `fn(example, rng) -> example`. The embedded `synthetic_av`
is built here; the others live in the repository's `data/` folder (TFDS builders) and
are imported by name.

Batching is deterministic and resumable: the order of epoch e is a grain shuffle seeded
by (seed, e), and global batch b of that epoch is made of the process-local batches
b * P + p of the P processes (p = process index), so a run restarted at step s reads
exactly the batches it would have read, and P processes together feed the same global
batch as one process.
"""

from __future__ import annotations

import dataclasses
import importlib
import queue
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import grain
import jax
import numpy as np

from redreg_jax import synthetic

Preprocess = Callable[[dict, np.random.Generator], dict]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  modalities: tuple[str, ...]
  num_classes: int
  shapes: Mapping[str, tuple[int, ...]]
  class_names: tuple[str, ...] = ()
  # The dataset's name in summaries and report tables; a data module may give a more
  # specific one than data.name (the folder format: 'folder:<its directory>').
  name: str = ""


@dataclasses.dataclass
class Dataset:
  info: DatasetInfo
  sources: Mapping[str, Any]               # split -> random-access source
  preprocess: Mapping[bool, Preprocess | None]  # train? -> fn


class ArraySource:
  """Random-access source over in-memory arrays {key: [N, ...]}."""

  def __init__(self, arrays: Mapping[str, np.ndarray], keys: Sequence[str]):
    self._arrays = {k: arrays[k] for k in keys}
    self._n = len(arrays["label"])

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    return {k: v[i] for k, v in self._arrays.items()}


def get_dataset(data_cfg) -> Dataset:
  """Builds the dataset named by `data_cfg.name`."""
  name = data_cfg.name
  if name == "synthetic_av":
    cfg = synthetic.config_from(data_cfg)
    cfg.validate()
    splits = {s: synthetic.generate_split(cfg, s) for s in synthetic.SPLITS}
    modalities = ("audio", "visual")
    info = DatasetInfo(modalities, cfg.num_classes,
                       {m: splits["train"][m].shape[1:] for m in modalities},
                       tuple(f"class_{k}" for k in range(cfg.num_classes)), name)
    sources = {s: ArraySource(a, modalities + ("label",)) for s, a in splits.items()}
    return Dataset(info, sources, {True: None, False: None})
  try:
    module = importlib.import_module(f"data.{name}")
  except ModuleNotFoundError as e:
    raise ValueError(
        f"Unknown dataset data.name={name!r}: no module data/{name}.py (run from the "
        "repository root; known: synthetic_av, cremad, kinetics_sounds, cmu_mosi, "
        "av_digits, folder).") from e
  raw = module.info(data_cfg)
  info = DatasetInfo(tuple(raw["modalities"]), int(raw["num_classes"]),
                     {m: tuple(s) for m, s in raw["shapes"].items()},
                     tuple(raw.get("class_names", ())), str(raw.get("name", name)))
  sources = {s: module.load_split(data_cfg, s) for s in ("train", "validation", "test")}
  return Dataset(info, sources, {t: module.make_preprocess(data_cfg, t) for t in (True, False)})


def _select(keys):
  return lambda ex: {k: ex[k] for k in keys}


class _PaddedSource:
  """Pads a source to `length` with copies of example 0 flagged by mask 0."""

  def __init__(self, source, length):
    self._source, self._n, self._length = source, len(source), length

  def __len__(self):
    return self._length

  def __getitem__(self, i):
    ex = dict(self._source[i if i < self._n else 0])
    ex["mask"] = np.float32(i < self._n)
    return ex


class SubsetSource:
  """The examples of `source` at `indices` (in that order), as a random-access source."""

  def __init__(self, source, indices):
    self._source = source
    self._indices = np.asarray(indices, np.int64)
    if self._indices.size and (self._indices.min() < 0 or self._indices.max() >= len(source)):
      raise ValueError(f"SubsetSource: indices must lie in [0, {len(source)}).")

  def __len__(self):
    return int(self._indices.size)

  def __getitem__(self, i):
    return self._source[int(self._indices[i])]


def seeded_subset(num_examples: int, fraction: float, seed: int) -> np.ndarray:
  """A fixed random subset of max(1, round(fraction * n)) indices, sorted (per seed)."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"subset fraction must be in (0, 1], got {fraction!r}")
  size = max(1, int(round(fraction * num_examples)))
  return np.sort(np.random.default_rng(seed).permutation(num_examples)[:size])


HELD_OUT = "held_out"  # The split of training examples a method keeps out of training.


def hold_out(dataset: Dataset, indices) -> Dataset:
  """`dataset` with the training examples at `indices` moved to split HELD_OUT."""
  train = dataset.sources["train"]
  held = np.unique(np.asarray(indices, np.int64))
  keep = np.setdiff1d(np.arange(len(train)), held)
  if not held.size or not keep.size:
    raise ValueError(f"hold_out: {held.size} of the {len(train)} training examples held "
                     "out; both the held-out and the training part must be non-empty.")
  sources = {**dataset.sources, "train": SubsetSource(train, keep),
             HELD_OUT: SubsetSource(train, held)}
  return dataclasses.replace(dataset, sources=sources)


def partial_batch_size(num_examples: int, global_batch: int, granularity: int = 1) -> int:
  """Size of the kept last partial batch: the remainder, down to a multiple of `granularity`.

  `granularity` is the global device count: a batch is split evenly over the devices,
  so on one device the whole remainder is kept (as PyTorch's DataLoader does by default).
  """
  tail = num_examples % global_batch
  return tail - tail % max(1, granularity)


def steps_per_epoch(num_examples: int, global_batch: int, keep_partial: bool = False,
                    granularity: int = 1) -> int:
  """Full batches per epoch, plus one for a kept partial batch."""
  extra = keep_partial and partial_batch_size(num_examples, global_batch, granularity) > 0
  return num_examples // global_batch + int(extra)


def train_batches(source, preprocess: Preprocess | None, keys: Sequence[str], *,
                  global_batch: int, seed: int, epoch: int, start_batch: int = 0,
                  num_threads: int = 2, prefetch: int = 4, keep_partial: bool = False,
                  granularity: int = 1) -> Iterator[dict]:
  """Process-local training batches of epoch `epoch`, from global batch `start_batch` on.

  With `keep_partial`, the epoch ends with one smaller batch of the remaining
  examples (see `partial_batch_size`); its new shape costs one more compilation.
  """
  p, n_proc = jax.process_index(), jax.process_count()
  if global_batch % n_proc:
    raise ValueError(f"batch size {global_batch} is not divisible by {n_proc} processes")
  local = global_batch // n_proc
  ds = grain.MapDataset.source(source).shuffle(seed=seed * 100_003 + epoch)
  if preprocess is not None:
    ds = ds.random_map(preprocess, seed=seed * 100_019 + epoch)
  ds = ds.map(_select(keys))
  num_batches = len(source) // global_batch
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  full = ds.batch(local, drop_remainder=True)[: num_batches * n_proc]
  full = full[(start_batch * n_proc + p)::n_proc]
  tail = partial_batch_size(len(source), global_batch, granularity) if keep_partial else 0
  if not tail:
    return iter(full.to_iter_dataset(options))
  if tail % n_proc:
    raise ValueError(f"the partial batch of {tail} examples is not divisible by {n_proc} "
                     "processes")
  first = num_batches * global_batch
  last = ds[first:first + tail].batch(tail // n_proc)[p:p + 1]
  parts = ([full] if start_batch < num_batches else []) + [last]
  return (b for part in parts for b in part.to_iter_dataset(options))


def eval_batches(source, preprocess: Preprocess | None, keys: Sequence[str], *,
                 global_batch: int, seed: int = 0, num_threads: int = 2) -> Iterator[dict]:
  """Process-local eval batches covering the split once, padded with mask 0."""
  p, n_proc = jax.process_index(), jax.process_count()
  local = global_batch // n_proc
  n = len(source)
  padded = -(-n // global_batch) * global_batch
  ds = grain.MapDataset.source(_PaddedSource(source, padded))
  if preprocess is not None:
    # Seeded per index: evaluation sees the same inputs every time.
    ds = ds.random_map(lambda ex, rng: {**preprocess(ex, rng), "mask": ex["mask"]}, seed=seed)
  ds = ds.map(_select(tuple(keys) + ("mask",))).batch(local)[p::n_proc]
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=4)))


def to_global(batch: Mapping[str, np.ndarray], sharding) -> dict:
  """Assembles process-local numpy batches into global arrays sharded over `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), dict(batch))


def prefetch_to_device(iterator: Iterator[dict], sharding, size: int = 2) -> Iterator[dict]:
  """Moves the next `size` batches to the devices from a background thread."""
  q: queue.Queue = queue.Queue(maxsize=size)
  sentinel = object()

  def producer():
    try:
      for batch in iterator:
        q.put(to_global(batch, sharding))
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)
    q.put(sentinel)

  threading.Thread(target=producer, daemon=True).start()
  while True:
    item = q.get()
    if item is sentinel:
      return
    if isinstance(item, BaseException):
      raise item
    yield item
