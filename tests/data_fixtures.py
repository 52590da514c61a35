"""Tiny media fixtures in the datasets' real formats, written on the fly.

Real WAV files (soundfile), real FLV/MP4 videos (PyAV), JPEG frame folders
(Pillow) and MultiBench-layout pickles; no network, no checked-in binaries.
"""

from __future__ import annotations

import os
import pickle

import av
import numpy as np
import soundfile as sf
from PIL import Image


def write_wav(path: str, seconds: float = 1.5, sr: int = 16000, freq: float = 440.0,
              seed: int = 0) -> np.ndarray:
  """Writes a 16-bit mono WAV (tone + a little noise); returns the float samples."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sr)) / sr
  x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sf.write(path, x.astype(np.float32), sr, subtype='PCM_16')
  return x


def _frame_image(i: int, size: int, seed: int) -> np.ndarray:
  """A frame whose colour encodes its index (so frame order can be checked)."""
  img = np.zeros((size, size, 3), np.uint8)
  img[..., 0] = (i * 10) % 256
  img[..., 1] = (seed * 37) % 256
  img[:, : size // 2, 2] = 200  # Left half differs from the right: flips are visible.
  return img


def write_video(path: str, *, seconds: float = 2.0, fps: int = 24, size: int = 32,
                codec: str = 'flv', audio_codec: str | None = 'mp3',
                audio_rate: int = 22050, seed: int = 0) -> None:
  """Writes a real video (FLV with flv1+mp3 like CREMA-D, or MP4 with mpeg4+aac)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, mode='w') as out:
    vs = out.add_stream(codec, rate=fps)
    vs.width, vs.height, vs.pix_fmt = size, size, 'yuv420p'
    aus = None
    if audio_codec:
      aus = out.add_stream(audio_codec, rate=audio_rate)
      aus.layout = 'mono'
    n = int(round(seconds * fps))
    for i in range(n):
      frame = av.VideoFrame.from_ndarray(_frame_image(i, size, seed), format='rgb24')
      for packet in vs.encode(frame):
        out.mux(packet)
    for packet in vs.encode():
      out.mux(packet)
    if aus is not None:
      t = np.arange(int(seconds * audio_rate)) / audio_rate
      wave = (0.3 * np.sin(2 * np.pi * (300 + 50 * seed) * t)).astype(np.float32)
      chunk = 1024
      for s in range(0, wave.size, chunk):
        # PyAV converts the packed float frame to the encoder's sample format.
        frame = av.AudioFrame.from_ndarray(wave[None, s:s + chunk], format='flt',
                                           layout='mono')
        frame.sample_rate = audio_rate
        frame.pts = s
        for packet in aus.encode(frame):
          out.mux(packet)
      for packet in aus.encode():
        out.mux(packet)


def truncate_file(path: str, fraction: float = 0.5) -> None:
  """Cuts a file to `fraction` of its bytes (simulates an interrupted copy)."""
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[: int(len(data) * fraction)])


def write_frame_folder(folder: str, n: int, size: int = 32, seed: int = 0) -> None:
  """Writes n JPEG frames 00001.jpg ... like FFmpeg's frame extraction."""
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    Image.fromarray(_frame_image(i, size, seed)).save(
        os.path.join(folder, f'{i + 1:05d}.jpg'), quality=95)


CREMAD_EMOTIONS = ('NEU', 'HAP', 'SAD', 'FEA', 'DIS', 'ANG')


def cremad_clip_names(actors=(1001, 1002, 1003, 1004), per_actor: int = 3) -> list[str]:
  """Clip names like 1001_DFA_ANG_XX covering every emotion."""
  names, sentences = [], ('DFA', 'IEO', 'IOM', 'ITH')
  k = 0
  for a in actors:
    for j in range(per_actor):
      emo = CREMAD_EMOTIONS[k % len(CREMAD_EMOTIONS)]
      names.append(f'{a}_{sentences[j % len(sentences)]}_{emo}_XX')
      k += 1
  return names


def make_cremad_official(root: str, names, *, video_seconds=2.0, wav_seconds=1.5) -> None:
  """The official release layout: AudioWAV/*.wav + VideoFlash/*.flv."""
  for i, name in enumerate(names):
    write_wav(os.path.join(root, 'AudioWAV', name + '.wav'), seconds=wav_seconds,
              freq=200 + 40 * i, seed=i)
    write_video(os.path.join(root, 'VideoFlash', name + '.flv'), seconds=video_seconds,
                codec='flv', audio_codec='mp3', seed=i)


def make_cremad_frames(root: str, names, *, folder='Image-03-FPS', frames=6) -> None:
  """The pre-extracted layout: AudioWAV/*.wav + Image-03-FPS/<clip>/*.jpg."""
  for i, name in enumerate(names):
    write_wav(os.path.join(root, 'AudioWAV', name + '.wav'), freq=200 + 40 * i, seed=i)
    write_frame_folder(os.path.join(root, folder, name), frames, seed=i)


def make_ks_tree(root: str, classes, clips_per_class: dict, *, layout='video',
                 seconds=2.0) -> None:
  """Kinetics-Sounds: <root>/<split>/<class>/<clip>.mp4 or <clip>.wav + <clip>/*.jpg."""
  k = 0
  for split, n in clips_per_class.items():
    for c in classes:
      for j in range(n):
        base = os.path.join(root, split, c, f'{c}_{split}_{j}')
        if layout == 'video':
          write_video(base + '.mp4', seconds=seconds, fps=10, codec='mpeg4',
                      audio_codec='aac', audio_rate=22050, seed=k)
        else:
          write_wav(base + '.wav', seconds=seconds, freq=300 + 30 * k, seed=k)
          write_frame_folder(base, int(seconds), seed=k)
        k += 1


def make_mosi_pickle(path: str, sizes=None, T=6, dims=None, seed=0,
                     nan_audio=True) -> dict:
  """A MultiBench-layout pickle {'train','valid','test'} -> dict of arrays."""
  sizes = sizes or {'train': 8, 'valid': 3, 'test': 4}
  dims = dims or {'vision': 5, 'audio': 4, 'text': 7}
  rng = np.random.default_rng(seed)
  data = {}
  for split, n in sizes.items():
    d = {m: rng.standard_normal((n, T, dim)).astype(np.float32) for m, dim in dims.items()}
    labels = np.round(rng.uniform(-3, 3, (n, 1, 1)), 1).astype(np.float32)
    labels[0, 0, 0] = 0.0  # An exact zero: exercises the zero-label policy.
    d['labels'] = labels
    d['id'] = np.array([[f'vid{split}{i // 2}', str(i)] for i in range(n)])
    if nan_audio:
      d['audio'][0, 0, 0] = np.nan
      d['audio'][0, 1, 1] = -np.inf
    data[split] = d
  with open(path, 'wb') as f:
    pickle.dump(data, f)
  return data
