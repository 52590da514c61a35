"""`synthetic_av`: the embedded default dataset, generated from a seed with no files.

Each example has an audio log-spectrogram-like array [F, T, 1] and T video frames
[T, H, W, 3], and a class y in [0, K). The class shows up as
  * audio: a class-specific set of harmonic frequency bands, switched on over a random
    stretch of time, on top of spectral noise;
  * visual: a class-specific oriented colour grating with random phase, in every frame.
Signal strength per modality is `snr_<m>` (pattern amplitude over unit noise). Each
example is one of three kinds: *shared* (class visible in both modalities), *audio
private* (visual carries noise only) or *visual private* (audio carries noise only),
with fractions `private_audio`, `private_visual` and the rest shared.

The defaults reproduce the imbalance the papers study: audio is easy and learnt fast,
so under joint training the visual branch stays well below what a visual-only model
reaches on the same data (numbers in README.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class SyntheticAVConfig:
  num_classes: int = 6
  num_train: int = 3000
  num_validation: int = 600
  num_test: int = 1200
  audio_freq: int = 32      # F
  audio_time: int = 32      # T of the spectrogram
  frames: int = 2           # video frames T
  image_size: int = 32      # H = W
  snr_audio: float = 1.0    # pattern amplitude / noise std
  snr_visual: float = 0.45
  private_audio: float = 0.2   # class visible in audio only
  private_visual: float = 0.1  # class visible in visual only
  seed: int = 0

  def validate(self):
    if self.num_classes < 2:
      raise ValueError(f"data.num_classes must be >= 2, got {self.num_classes}")
    for f in ("private_audio", "private_visual"):
      if not 0.0 <= getattr(self, f) <= 1.0:
        raise ValueError(f"data.{f} must be in [0, 1], got {getattr(self, f)}")
    if self.private_audio + self.private_visual > 1.0:
      raise ValueError("data.private_audio + data.private_visual must be <= 1, got "
                       f"{self.private_audio + self.private_visual}")
    for f in ("snr_audio", "snr_visual"):
      if getattr(self, f) < 0:
        raise ValueError(f"data.{f} must be >= 0, got {getattr(self, f)}")
    for f in ("num_train", "num_validation", "num_test", "audio_freq", "audio_time", "frames",
              "image_size"):
      if getattr(self, f) < 1:
        raise ValueError(f"data.{f} must be >= 1, got {getattr(self, f)}")


def _prototypes(cfg: SyntheticAVConfig, rng: np.random.Generator):
  """Class-specific pattern parameters, fixed by the seed."""
  k = cfg.num_classes
  # Audio: 3 harmonic bands per class at distinct base rows.
  bases = rng.permutation(np.arange(1, cfg.audio_freq // 3))[:k] if cfg.audio_freq >= 3 * k + 3 \
      else rng.integers(0, cfg.audio_freq, size=k)
  # Visual: one orientation and spatial frequency and colour per class.
  angles = np.linspace(0, np.pi, k, endpoint=False) + rng.uniform(0, np.pi / k)
  freqs = rng.uniform(2.0, 4.0, size=k)
  colours = rng.normal(size=(k, 3))
  colours /= np.linalg.norm(colours, axis=1, keepdims=True)
  return bases, angles, freqs, colours


def _audio_pattern(cfg, base, rng):
  f, t = cfg.audio_freq, cfg.audio_time
  pattern = np.zeros((f, t), np.float32)
  length = rng.integers(t // 2, t + 1)
  onset = rng.integers(0, t - length + 1)
  for h in (1, 2, 3):
    row = base * h
    if row < f:
      pattern[row, onset:onset + length] = 1.0 / h
  # Unit RMS over the active region keeps snr comparable across classes.
  return pattern / (np.sqrt(np.mean(pattern**2)) + 1e-8)


def _visual_pattern(cfg, angle, freq, colour, rng):
  s = cfg.image_size
  yy, xx = np.meshgrid(np.linspace(0, 1, s), np.linspace(0, 1, s), indexing="ij")
  phase = rng.uniform(0, 2 * np.pi)
  wave = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
  img = wave[..., None] * colour[None, None, :] * np.sqrt(3.0)
  return img.astype(np.float32)  # [H, W, 3], unit RMS


def generate_split(cfg: SyntheticAVConfig, split: str) -> dict[str, np.ndarray]:
  """Returns {'audio': [N,F,T,1], 'visual': [N,T,H,W,3], 'label': [N], 'kind': [N]}.

  `kind` is 0 shared, 1 audio-private, 2 visual-private.
  """
  cfg.validate()
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid: {SPLITS}")
  protos = _prototypes(cfg, np.random.default_rng([cfg.seed, 0]))
  rng = np.random.default_rng([cfg.seed, 1 + SPLITS.index(split)])
  n = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}[split]
  labels = rng.integers(0, cfg.num_classes, size=n).astype(np.int32)
  kind = rng.choice(3, size=n, p=[1.0 - cfg.private_audio - cfg.private_visual,
                                  cfg.private_audio, cfg.private_visual]).astype(np.int32)
  audio = rng.normal(size=(n, cfg.audio_freq, cfg.audio_time)).astype(np.float32)
  visual = rng.normal(size=(n, cfg.frames, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
  bases, angles, freqs, colours = protos
  for i in range(n):
    y = labels[i]
    if kind[i] != 2:
      audio[i] += cfg.snr_audio * _audio_pattern(cfg, bases[y], rng)
    if kind[i] != 1:
      visual[i] += cfg.snr_visual * _visual_pattern(cfg, angles[y], freqs[y], colours[y], rng)
  return {"audio": audio[..., None], "visual": visual, "label": labels, "kind": kind}


def config_from(data_cfg) -> SyntheticAVConfig:
  """Builds a SyntheticAVConfig from the `config.data` ConfigDict (unknown fields raise)."""
  fields = {f.name for f in dataclasses.fields(SyntheticAVConfig)}
  given = {k: v for k, v in data_cfg.items() if k not in ("name",)}
  unknown = sorted(set(given) - fields)
  if unknown:
    raise ValueError(f"Unknown synthetic_av field(s) {unknown}; valid: {sorted(fields)}")
  return SyntheticAVConfig(**given)
