r"""RedReg in your own training loop, on your own two-encoder Flax model.

  python examples/own_model_redreg.py                       # ~1 min on a CPU
  python examples/own_model_redreg.py --epochs=3 --steps_per_epoch=12 --width=8   # tiny

Nothing here uses the library's trainer or models: a user's `TwoStream` model (two MLP
encoders with their own parameter names, a concat + Dense head), plain optax, and the
four things RedReg needs from you (docs/methods.md §Setting, README "RedReg in your own
optax loop"):

1. a label tree: which parameters are which modality's encoder
   (`integrate.prefix_labels`);
2. branch logits: the FUSED head on one modality's features with the others zeroed
   (`integrate.zeroed_branch_logits`) - not separate untrained heads;
3. the raw redundancy score of each encoder from two noisy copies of its input
   (`integrate.twin_redundancy`, any apply function);
4. the epoch: the first `warmup_epochs` (2) epochs are plain SGD and the growth-rate
   window needs `window` (10) steps of an epoch before the gate can open.

The co-information gate compares pooled features, so both encoders must output the
same feature size. Each epoch prints how often the gate opened and, when it never did,
the factor that kept it shut (`integrate.inactive_note`).
"""

import argparse
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from redreg_jax import Observations, integrate, redreg_transform

NUM_CLASSES = 4


class Encoder(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(2 * self.width)(x))
    return nn.relu(nn.Dense(self.width)(h))  # Pooled features [B, width].


class TwoStream(nn.Module):
  """A user's model: parameters enc_audio / enc_visual / classifier."""

  width: int

  def setup(self):
    self.enc_audio = Encoder(self.width)
    self.enc_visual = Encoder(self.width)
    self.classifier = nn.Dense(NUM_CLASSES)

  def head(self, feats):
    return self.classifier(jnp.concatenate([feats["audio"], feats["visual"]], axis=-1))

  def __call__(self, xa, xv):
    feats = {"audio": self.enc_audio(xa), "visual": self.enc_visual(xv)}
    return self.head(feats), feats


def make_data(rng: np.random.Generator, n: int):
  """Audio is clean (dominant), visual is noisy (weak): both carry the label."""
  y = rng.integers(0, NUM_CLASSES, n)
  protos_a, protos_v = np.eye(NUM_CLASSES, 16) * 1.5, np.eye(NUM_CLASSES, 16) * 0.8
  xa = protos_a[y] + 1.0 * rng.normal(size=(n, 16))
  xv = protos_v[y] + 1.5 * rng.normal(size=(n, 16))
  return xa.astype(np.float32), xv.astype(np.float32), y.astype(np.int32)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--epochs", type=int, default=6)
  p.add_argument("--steps_per_epoch", type=int, default=40)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--width", type=int, default=32)
  p.add_argument("--lr", type=float, default=0.05)
  args = p.parse_args(argv)

  model = TwoStream(args.width)
  xa, xv, y = make_data(np.random.default_rng(0), args.steps_per_epoch * args.batch)
  params = model.init(jax.random.key(0), xa[:2], xv[:2])["params"]
  labels = integrate.prefix_labels({"enc_audio": "audio", "enc_visual": "visual"})
  tx = optax.chain(
      redreg_transform(("audio", "visual"), labels, num_epochs=args.epochs),
      optax.add_decayed_weights(1e-4),
      optax.sgd(args.lr, momentum=0.9))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, xa_b, xv_b, y_b, epoch, key):
    def loss_fn(p):
      logits, feats = model.apply({"params": p}, xa_b, xv_b)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y_b).mean()
      return ce, feats

    (loss, feats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    head = lambda f: model.apply({"params": params}, f, method=TwoStream.head)
    ka, kv = jax.random.split(key)
    enc = lambda name: (lambda x: model.apply({"params": params}, x,
                                              method=lambda m, x: getattr(m, name)(x)))
    obs = Observations(
        branch_logits=integrate.zeroed_branch_logits(head, feats),
        labels=y_b, features=jax.lax.stop_gradient(feats), epoch=epoch,
        redundancy={"audio": integrate.twin_redundancy(enc("enc_audio"), xa_b, ka),
                    "visual": integrate.twin_redundancy(enc("enc_visual"), xv_b, kv)},
        redundancy_valid={"audio": jnp.asarray(True), "visual": jnp.asarray(True)})
    updates, opt_state = tx.update(grads, opt_state, params, observations=obs)
    return optax.apply_updates(params, updates), opt_state, loss, integrate.diagnostics(
        opt_state)

  key = jax.random.key(1)
  for epoch in range(args.epochs):
    history: dict[str, list[float]] = {}
    for i in range(args.steps_per_epoch):
      sl = slice(i * args.batch, (i + 1) * args.batch)
      params, opt_state, loss, diag = step(params, opt_state, xa[sl], xv[sl], y[sl],
                                           jnp.asarray(epoch, jnp.int32),
                                           jax.random.fold_in(key, epoch * 10_000 + i))
      for k, v in jax.device_get(diag).items():
        history.setdefault(k, []).append(float(v))
    logits, _ = model.apply({"params": params}, xa, xv)
    acc = float(jnp.mean(jnp.argmax(logits, -1) == y))
    print(f"epoch {epoch}: loss {float(loss):.3f} train acc {acc:.3f} gate open "
          f"{100 * np.mean(history['gate_open']):.0f}% of steps, p_audio "
          f"{np.mean(history['p_audio']):.2f} p_visual {np.mean(history['p_visual']):.2f} "
          f"sim {np.mean(history['sim']):.2f} (tau {np.mean(history['tau']):.2f})",
          flush=True)
    note = integrate.inactive_note(history)
    if note:
      print(f"  {note}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
