r"""t-SNE of a trained model's pooled features, coloured by class (RedReg paper Fig.6).

  python -m redreg_jax.tsne runs/synthetic/redreg --out=tsne_redreg.png [--split=test] \
      [--checkpoint=best|latest] [--max_points=1000]

Rebuilds the experiment from WORKDIR/config.json, restores a checkpoint, embeds the
split's fused features (the concatenation of every modality's pooled features, what a
concat-fusion head sees) and each modality's features, one panel each. Panel titles give
the accuracy on those examples and the silhouette score of the classes in feature space
(higher: tighter, better separated clusters).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

try:
  from matplotlib.figure import Figure  # Figure + savefig uses Agg; no pyplot global state.
except ImportError as e:
  raise ImportError("redreg_jax.tsne needs matplotlib: pip install 'matplotlib>=3.8' "
                    "(or pip install -e '.[plots]').") from e


class TsneError(ValueError):
  """The workdir cannot be embedded (no config, no checkpoint, too few examples)."""


_START = time.monotonic()


def _say(msg: str) -> None:
  """One progress line on stderr (stdout carries only the written path)."""
  print(f"tsne [{time.monotonic() - _START:5.1f}s] {msg}", file=sys.stderr, flush=True)


def load_config(workdir: str):
  """The resolved config the run wrote to WORKDIR/config.json, as a ConfigDict."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.isdir(workdir):
    raise TsneError(f"{workdir} is not a directory (pass the --workdir given to launch.py).")
  if not os.path.isfile(path):
    raise TsneError(f"{path} not found: {workdir} is not a run workdir.")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def extract_features(workdir: str, split: str = "test", which: str = "best") -> dict:
  """Restores `which` checkpoint of WORKDIR and runs it over `split`.

  Returns:
    {'features': {m: [N, D_m] float32}, 'label': [N] int, 'modalities': tuple,
     'metrics': evaluation metrics of these N examples, 'step': restored step,
     'class_names': tuple (may be empty), 'config': the run's ConfigDict, 'split'}.
  """
  if which not in ("best", "latest"):
    raise TsneError(f"checkpoint must be 'best' or 'latest', got {which!r}.")
  config = load_config(workdir)
  sub = "best" if which == "best" else "checkpoints"
  if not os.path.isdir(os.path.join(workdir, sub)) or not os.listdir(os.path.join(workdir, sub)):
    raise TsneError(f"{workdir}/{sub} holds no checkpoint (the run has not finished an epoch"
                    f"{'' if which == 'best' else ' or a checkpoint interval'}); try "
                    f"--checkpoint={'latest' if which == 'best' else 'best'} or train longer.")
  import jax  # pylint: disable=g-import-not-at-top
  from redreg_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from redreg_jax import train  # pylint: disable=g-import-not-at-top
  _say(f"building the data and model of {workdir}")
  exp = train.Experiment(config)
  if split not in exp.dataset.sources:
    raise TsneError(f"split {split!r} not in the dataset; valid: {sorted(exp.dataset.sources)}.")
  # Shapes only: tracing init is enough for the restore template, compiling it is not needed.
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=exp.repl),
                          jax.eval_shape(exp.init_state))
  ckpt = ckpt_lib.Checkpointer(workdir)
  try:
    restored = ckpt.restore(abstract, which=which)
  finally:
    ckpt.close()
  if restored is None:
    raise TsneError(f"no {which} checkpoint in {workdir}/{sub}.")
  state = jax.device_put(restored[0], exp.repl)
  _say(f"restored the {which} checkpoint (step {int(state.step)}); features of the "
       f"{len(exp.dataset.sources[split])} {split} examples")
  res = exp.evaluate(state, split, return_features=True)
  out = res.pop("_outputs")
  return {"features": {m: np.asarray(out["features"][m], np.float32) for m in exp.modalities},
          "label": np.asarray(out["label"]), "modalities": tuple(exp.modalities),
          "metrics": res, "step": int(state.step),
          "class_names": tuple(exp.info.class_names), "config": config, "split": split}


def embed(x_NxD: np.ndarray, seed: int = 0) -> np.ndarray:
  """2-D t-SNE of the rows of x, [N, 2].

  No per-feature standardisation: it would inflate near-constant (dead ReLU) units and,
  for the fused features, hide which modality's features dominate the distances.
  """
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  x = np.asarray(x_NxD, np.float64)
  n = x.shape[0]
  # sklearn needs perplexity < N; ~N/3 keeps small test splits from collapsing to one blob.
  perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
  # Barnes-Hut's tree and thread start-up cost seconds even for a few points; exact O(N^2)
  # gradients are faster up to a few hundred.
  method = "exact" if n <= 250 else "barnes_hut"
  return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
              learning_rate="auto", method=method).fit_transform(x)


def _silhouette(x, labels):
  from sklearn.metrics import silhouette_score  # pylint: disable=g-import-not-at-top
  if len(np.unique(labels)) < 2 or len(labels) <= len(np.unique(labels)):
    return float("nan")
  return float(silhouette_score(x, labels))


def tsne_figure(workdir: str, out_path: str, split: str = "test", which: str = "best",
                max_points: int = 1000, seed: int = 0) -> str:
  """Writes one PNG: t-SNE of the fused features and of each modality's features.

  Args:
    workdir: a run workdir (config.json plus best/ or checkpoints/).
    out_path: the PNG to write (its directory is created).
    split: 'test', 'validation' or 'train'.
    which: 'best' (chosen on validation) or 'latest' checkpoint.
    max_points: random subset size (t-SNE is O(N^2) in memory).
    seed: for the subset and t-SNE.
  Returns:
    out_path.
  """
  if max_points < 5:  # Before the (slow) model rebuild.
    raise TsneError(f"max_points must be at least 5, got {max_points}.")
  data = extract_features(workdir, split, which)
  return plot_tsne(data, out_path, max_points=max_points, seed=seed,
                   title=f"{split} split, {which} checkpoint")


def plot_tsne(data: dict, out_path: str, max_points: int = 1000, seed: int = 0,
              title: str = "") -> str:
  """Draws the panels of tsne_figure from extract_features' output; returns out_path."""
  if max_points < 5:
    raise TsneError(f"max_points must be at least 5, got {max_points}.")
  split = data.get("split", "?")
  title = title or f"{split} split"
  labels = data["label"]
  n = len(labels)
  if n < 5:
    raise TsneError(f"split {split!r} has {n} examples; t-SNE needs at least 5.")
  keep = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False)) \
      if n > max_points else np.arange(n)
  labels = labels[keep]
  mods = data["modalities"]
  feats = {m: data["features"][m][keep] for m in mods}
  panels = [("fused (" + " ⊕ ".join(mods) + ")", np.concatenate([feats[m] for m in mods], -1),
             data["metrics"].get("accuracy"))] if len(mods) > 1 else []
  panels += [(m, feats[m], data["metrics"].get(f"accuracy_{m}")) for m in mods]

  classes = np.unique(labels)
  names = data["class_names"]
  import matplotlib  # pylint: disable=g-import-not-at-top
  k = len(classes)
  if k <= 20:
    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    color_of = lambda j: cmap(j)
  else:  # Beyond 20 distinct colours a continuous map is the honest choice.
    color_of = lambda j: matplotlib.colormaps["turbo"](j / (k - 1))
  fig = Figure(figsize=(4.4 * len(panels), 4.6))
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for i, (ax, (panel, x, acc)) in enumerate(zip(axes, panels)):
    _say(f"t-SNE panel {i + 1}/{len(panels)}: {panel}, {x.shape[0]} points x {x.shape[1]}")
    xy = embed(x, seed)
    for j, c in enumerate(classes):
      sel = labels == c
      name = names[c] if c < len(names) else str(c)
      ax.scatter(xy[sel, 0], xy[sel, 1], s=7, alpha=0.8, label=name, color=color_of(j))
    stats = [f"D={x.shape[1]}", f"silhouette {_silhouette(x, labels):.2f}"]
    if acc is not None:
      stats.insert(0, f"acc {100 * acc:.1f}%")  # On the whole split, not just the subset.
    ax.set_title(f"{panel}\n{', '.join(stats)}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  if k <= 20:
    axes[-1].legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5),
                    title="class", title_fontsize=8)
  cfg = data["config"]
  fig.suptitle(f"{cfg.get('method', '?')} (seed {cfg.get('seed', '?')}), {title} "
               f"(step {data['step']}), {len(labels)} of {n} examples", fontsize=10)
  fig.tight_layout()
  if os.path.dirname(out_path):
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
  fig.savefig(out_path, dpi=110)
  return out_path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdir")
  p.add_argument("--out", required=True, help="PNG to write")
  p.add_argument("--split", default="test", choices=("test", "validation", "train"))
  p.add_argument("--checkpoint", default="best", choices=("best", "latest"))
  p.add_argument("--max_points", type=int, default=1000)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  try:
    path = tsne_figure(args.workdir, args.out, args.split, args.checkpoint, args.max_points,
                       args.seed)
  except (TsneError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  from redreg_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
