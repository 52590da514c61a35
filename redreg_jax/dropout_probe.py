r"""Why zeroing a modality's batch blows up its encoder's gradient (docs/reproducing.md).

  python -m redreg_jax.dropout_probe [--steps=5] [--runs]

Part 1: trains `joint` on synthetic_av at smoke size for a few clean steps and, after
each, prints each encoder's gradient norm on the same batch clean, with the audio input
zeroed and with the visual input zeroed. Train-mode BatchNorm on a constant batch has
~zero variance, so its backward pass scales the gradient by gamma / sqrt(var + eps).
Part 2 (`--runs`): the whole `redreg_official` smoke run, seeds 0 and 1, with the released
`dropped_encoder='trained'` and with 'frozen': non-finite steps and the largest gradient
norm.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import optax

from redreg_jax import config_lib
from redreg_jax import train


def gradient_norms(exp, state, inputs, labels) -> dict:
  """{params group: gradient norm} of the joint loss in train mode."""
  def loss(p):
    out, _ = exp.model.apply({"params": p, "batch_stats": state.batch_stats}, inputs,
                             train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(0)})
    return train.cross_entropy(out["logits"], labels)
  grads = jax.grad(loss)(state.params)
  return {k: float(optax.tree.norm(v)) for k, v in grads.items()}


def probe_gradients(steps: int) -> None:
  exp = train.Experiment(config_lib.load_config("configs/synthetic.py:joint,smoke"))
  state = exp.init_state()
  batch = next(iter(exp.train_batches(0)))
  clean = {m: batch[m] for m in exp.modalities}
  print("step  batch          " + "  ".join(f"|g| {k:>14}" for k in sorted(state.params)))
  for step in range(steps + 1):
    for name in ("clean",) + tuple(f"{m} zeroed" for m in exp.modalities):
      inputs = dict(clean)
      if name != "clean":
        m = name.split()[0]
        inputs[m] = jnp.zeros_like(clean[m])
      norms = gradient_norms(exp, state, inputs, batch["label"])
      print(f"{step:>4}  {name:<14} " + "  ".join(f"{norms[k]:>18.1f}" for k in sorted(norms)))
    state, _ = exp.train_step(state, batch)


def probe_runs() -> None:
  for mode in ("trained", "frozen"):
    for seed in (0, 1):
      cfg = config_lib.load_config("configs/synthetic.py:redreg_official,smoke")
      cfg.seed = seed
      cfg.optim.dropped_encoder = mode
      exp = train.Experiment(cfg)
      state = exp.init_state()
      bad, worst, steps = 0, 0.0, 0
      for epoch in range(exp.num_epochs):
        for batch in exp.train_batches(epoch):
          state, metrics = exp.train_step(state, batch)
          steps += 1
          bad += int(not bool(metrics["finite"]))
          worst = max(worst, float(metrics["grad_norm"]))
      print(f"redreg_official dropped_encoder={mode:<8} seed {seed}: {bad}/{steps} non-finite "
            f"steps, largest gradient norm {worst:.3g}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--runs", action="store_true", help="also the two smoke runs per mode")
  args = p.parse_args(argv)
  probe_gradients(args.steps)
  if args.runs:
    probe_runs()
  return 0


if __name__ == "__main__":
  from redreg_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
