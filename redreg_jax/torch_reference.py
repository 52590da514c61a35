r"""PyTorch reference step for `python -m redreg_jax.benchmark --reference=torch`.

The same computation as this library's jitted joint step on the default models: two
ResNet-18 encoders (audio [B, 1, F, T]; visual frames [B, T, 3, H, W] folded into the
batch, features average-pooled over time and space), concat fusion into one linear
head, softmax cross-entropy, train-mode BatchNorm (momentum 0.1, eps 1e-5), and
SGD with momentum 0.9 and weight decay 1e-4 added to the gradient (what
`optax.add_decayed_weights` ahead of `optax.sgd` computes). Initialisation as in
redreg_jax.models: Kaiming-normal (fan_out, ReLU gain) convolutions, Xavier-uniform
linear layers, BatchNorm scale 1 and bias 0. The layout is PyTorch's default NCHW, as
in the released RedReg code's model.

This file is benchmark-only: nothing in the library or the tests imports it, and it
imports nothing from the library. The benchmark starts it as a separate process
(`python redreg_jax/torch_reference.py`), so its peak memory is its own, and talks to
it over stdin/stdout, one JSON object per line:

  -> {"spec": {...}}             build the model and batch, warm up; <- {"ready": ...}
  -> {"run": n}                  n timed steps;                       <- {"times": [...]}
  -> {"stop": true}              <- {"peak_rss_mb": ...}, then exit

Needs `pip install -r requirements-bench.txt` (torch 2.13.0, CPU build).
"""

from __future__ import annotations

import json
import resource
import sys
import time


def _resnet18(torch, in_channels: int, width: float, blocks: int = 2):
  nn = torch.nn
  widths = [max(1, int(round(w * width))) for w in (64, 128, 256, 512)]

  class Block(nn.Module):
    """Basic block: two 3x3 convolutions and a (projected) shortcut."""

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.proj = None
      if stride != 1 or cin != cout:
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                  nn.BatchNorm2d(cout))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.proj is None else self.proj(x)))

  layers = [nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
            nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
  cin = widths[0]
  for stage, cout in enumerate(widths):
    for block in range(blocks):  # 2 per stage: ResNet-18.
      layers.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
      cin = cout
  return nn.Sequential(*layers), widths[-1]


def build(torch, spec: dict):
  """(model, optimizer, inputs) for a spec {batch, width, blocks, num_classes, audio, visual,
  seed}; blocks (basic blocks per ResNet stage) defaults to ResNet-18's 2."""
  nn = torch.nn
  torch.manual_seed(int(spec["seed"]))

  class TwoStream(nn.Module):
    """Audio and visual ResNet-18 encoders, concat fusion, one linear head."""

    def __init__(self):
      super().__init__()
      blocks = spec.get("blocks", 2)
      self.audio, da = _resnet18(torch, 1, spec["width"], blocks)
      self.visual, dv = _resnet18(torch, 3, spec["width"], blocks)
      self.head = nn.Linear(da + dv, int(spec["num_classes"]))

    def forward(self, audio_Bx1xFxT, visual_BxTx3xHxW):
      za = self.audio(audio_Bx1xFxT).mean(dim=(2, 3))
      b, t = visual_BxTx3xHxW.shape[:2]
      fmap = self.visual(visual_BxTx3xHxW.reshape((b * t,) + visual_BxTx3xHxW.shape[2:]))
      zv = fmap.reshape((b, t) + fmap.shape[1:]).mean(dim=(1, 3, 4))
      return self.head(torch.cat([za, zv], dim=1))

  model = TwoStream()
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.Linear):
      nn.init.xavier_uniform_(m.weight)
      nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.ones_(m.weight)
      nn.init.zeros_(m.bias)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=float(spec["lr"]), momentum=0.9,
                        weight_decay=1e-4)
  b = int(spec["batch"])
  f, t = spec["audio"]
  frames, size = spec["visual"]
  g = torch.Generator().manual_seed(int(spec["seed"]))
  inputs = (torch.randn(b, 1, f, t, generator=g),
            torch.randn(b, frames, 3, size, size, generator=g),
            torch.randint(0, int(spec["num_classes"]), (b,), generator=g))
  return model, opt, inputs


def peak_rss_mb() -> float:
  """Peak resident memory of this process image in MiB.

  /proc/self/status VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's
  peak at fork, so it would report the benchmark's own memory.
  """
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024  # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
  import torch  # pylint: disable=g-import-not-at-top
  loss_fn = torch.nn.CrossEntropyLoss()
  model = opt = inputs = None

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(inputs[0], inputs[1]), inputs[2])
    loss.backward()
    opt.step()
    return loss

  def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

  for line in sys.stdin:
    msg = json.loads(line)
    if "spec" in msg:
      spec = msg["spec"]
      torch.set_num_threads(int(spec["threads"]))
      model, opt, inputs = build(torch, spec)
      t0 = time.perf_counter()
      # oneDNN builds its kernels over the first steps: at least 3 untimed ones.
      for _ in range(max(3, int(spec["warmup"]))):
        step()
      reply({"ready": True, "warmup_s": time.perf_counter() - t0,
             "torch": torch.__version__, "threads": torch.get_num_threads(),
             "params": sum(p.numel() for p in model.parameters())})
    elif "run" in msg:
      times = []
      for _ in range(int(msg["run"])):
        t0 = time.perf_counter()
        loss = step()
        loss.detach().item()  # Synchronous on the CPU; waits for the step to finish.
        times.append(time.perf_counter() - t0)
      reply({"times": times})
    elif "stop" in msg:
      reply({"peak_rss_mb": peak_rss_mb()})
      return 0
  return 0


if __name__ == "__main__":
  sys.path.pop(0)  # This file's folder: its modules must not shadow torch's imports.
  sys.exit(main())
