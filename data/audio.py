"""Audio and video preprocessing shared by the dataset builders (docs/reproducing.md §Data).

Everything here is numpy/PIL/PyAV only (no TensorFlow, no torch), so that the
same code runs at prepare time and in the input pipeline:

* waveform I/O and resampling (`load_wav`, `decode_audio`, `resample`);
* the CREMA-D log-magnitude STFT of the official OGM-GE/InfoReg code
  (`cremad_log_spectrogram`: 22,050 Hz, 3 s, n_fft 512, hop 353 -> 257 x 188);
* a Kaldi-compatible log-mel filterbank (`kaldi_fbank`), as computed by Kaldi's
  `compute-fbank-feats` / torchaudio's `compliance.kaldi.fbank`, used for
  Kinetics-Sounds (128 bins, 25 ms window, 10 ms shift, 1,024 frames);
* video frame extraction at a fixed frame rate with PyAV (`decode_video_frames`);
* JPEG coding and the torchvision-style image transforms used in training
  (`random_resized_crop`, `resize`, `normalize_imagenet`, `frames_to_clip`).

Errors raised on unreadable media are `MediaError`, whose message names the file.
"""

from __future__ import annotations

import io
import math
import os
import re
from fractions import Fraction
from typing import Sequence

import numpy as np
from PIL import Image

# torchvision's ImageNet statistics, used by every official pipeline (docs/reproducing.md §Data).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class MediaError(RuntimeError):
  """A media file is missing, corrupt or truncated; the message names it."""


# --------------------------------------------------------------------------
# Waveforms.
# --------------------------------------------------------------------------


def check_riff_complete(path: str) -> None:
  """Raises MediaError if a RIFF/WAVE file's data chunk runs past the end of the file.

  libsndfile quietly reads what is there of a truncated WAV; the header's data
  size tells the truth, so compare it with the bytes present.
  """
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b'RIFF' or head[8:12] != b'WAVE':
      return  # Not RIFF/WAVE: libsndfile judges the format.
    pos = 12
    while pos + 8 <= size:
      f.seek(pos)
      chunk = f.read(8)
      chunk_id, chunk_size = chunk[:4], int.from_bytes(chunk[4:8], 'little')
      if chunk_id == b'data':
        if chunk_size != 0xFFFFFFFF and pos + 8 + chunk_size > size:
          raise MediaError(
              f'audio file {path} is truncated: its header declares {chunk_size} bytes '
              f'of samples, the file holds {size - pos - 8}')
        return
      pos += 8 + chunk_size + (chunk_size & 1)  # Chunks are padded to even sizes.


def load_wav(path: str) -> tuple[np.ndarray, int]:
  """Reads an audio file as mono float32 in [-1, 1].

  Channels are averaged (as `librosa.load(mono=True)` does).

  Args:
    path: a file soundfile/libsndfile can read (WAV, FLAC, ...).

  Returns:
    (samples [N] float32, sample_rate).
  """
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  try:
    check_riff_complete(path)
    samples, sr = sf.read(path, dtype='float32', always_2d=True)
  except MediaError:
    raise
  except Exception as e:  # libsndfile raises several error types.
    raise MediaError(f'cannot read audio file {path}: {e}') from e
  if samples.shape[0] == 0:
    raise MediaError(f'audio file {path} holds no samples (empty or truncated)')
  if not np.all(np.isfinite(samples)):  # Float WAVs can store NaN/inf.
    raise MediaError(f'audio file {path} holds non-finite samples (NaN or inf)')
  return samples.mean(axis=1).astype(np.float32), int(sr)


def resample(samples: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
  """Polyphase resampling from `sr_in` to `sr_out` Hz (scipy.signal.resample_poly)."""
  if sr_in == sr_out:
    return samples.astype(np.float32)
  from scipy import signal  # pylint: disable=g-import-not-at-top
  ratio = Fraction(int(sr_out), int(sr_in))
  out = signal.resample_poly(samples.astype(np.float64), ratio.numerator,
                             ratio.denominator)
  return out.astype(np.float32)


def decode_audio(path: str, sample_rate: int) -> np.ndarray:
  """Decodes the first audio stream of a video/audio container to mono float32.

  Args:
    path: any container FFmpeg reads (mp4, mkv, webm, flv, ...).
    sample_rate: output rate in Hz (FFmpeg's resampler converts).

  Returns:
    [N] float32 samples in [-1, 1].
  """
  import av  # pylint: disable=g-import-not-at-top
  chunks = []
  try:
    with av.open(path) as container:
      if not container.streams.audio:
        raise MediaError(f'{path} has no audio stream')
      stream = container.streams.audio[0]
      resampler = av.AudioResampler(format='flt', layout='mono', rate=sample_rate)
      for frame in container.decode(stream):
        for out in resampler.resample(frame):
          chunks.append(out.to_ndarray().reshape(-1))
      for out in resampler.resample(None):  # Flush the resampler's buffer.
        chunks.append(out.to_ndarray().reshape(-1))
  except MediaError:
    raise
  except Exception as e:  # av.error.* and OSError.
    raise MediaError(f'cannot decode the audio of {path}: {e}') from e
  if not chunks or sum(c.size for c in chunks) == 0:
    raise MediaError(f'{path}: the audio stream decoded to no samples (truncated?)')
  samples = np.concatenate(chunks).astype(np.float32)
  if not np.all(np.isfinite(samples)):
    raise MediaError(f'{path}: the audio stream holds non-finite samples (NaN or inf)')
  return samples


# --------------------------------------------------------------------------
# CREMA-D: log-magnitude STFT (official OGM-GE / InfoReg / RedReg code).
# --------------------------------------------------------------------------


def hann_periodic(n: int) -> np.ndarray:
  """The periodic ("fftbins") Hann window librosa.stft uses by default."""
  return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float64)


def stft_magnitude(samples: np.ndarray, n_fft: int, hop: int, *,
                   center: bool = True, pad_mode: str = 'constant') -> np.ndarray:
  """|STFT| with librosa.stft's framing: [n_fft // 2 + 1, 1 + len // hop] when centred.

  Args:
    samples: [N] waveform.
    n_fft: FFT size = window length (periodic Hann window).
    hop: hop length in samples.
    center: pad n_fft // 2 on both sides first (librosa's default), so that
      frame t is centred at sample t * hop.
    pad_mode: np.pad mode for centring; librosa >= 0.10 uses 'constant' (zeros).

  Returns:
    [n_fft // 2 + 1, frames] float64 magnitudes.
  """
  x = np.asarray(samples, np.float64)
  if center:
    x = np.pad(x, n_fft // 2, mode=pad_mode)
  if x.size < n_fft:
    raise ValueError(f'signal of {x.size} samples is shorter than n_fft={n_fft}')
  n_frames = 1 + (x.size - n_fft) // hop
  frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][:n_frames]
  spec = np.fft.rfft(frames * hann_periodic(n_fft), axis=-1)
  return np.abs(spec).T


def tile_to_length(samples: np.ndarray, length: int) -> np.ndarray:
  """Repeats a waveform until it has `length` samples, then cuts it there."""
  if samples.size == 0:
    raise ValueError('cannot tile an empty waveform')
  # The official code tiles 3 times (np.tile(x, 3)[:3 s]); that equals this for
  # every clip of >= 1 s (all of CREMA-D) and still gives 3 s for shorter ones.
  reps = max(3, math.ceil(length / samples.size))
  return np.tile(samples, reps)[:length]


def cremad_log_spectrogram(samples: np.ndarray, sample_rate: int, *,
                           target_rate: int = 22050, seconds: float = 3.0,
                           n_fft: int = 512, hop: int = 353) -> np.ndarray:
  """CREMA-D audio input of the official code: [257, 188] float32 (docs/reproducing.md §Data).

  Resample to 22,050 Hz, tile to 3 s, clip to [-1, 1], centred STFT with n_fft
  512 / hop 353 (1 + 66,150 // 353 = 188 frames), then log(|S| + 1e-7).

  Args:
    samples: [N] mono waveform in [-1, 1].
    sample_rate: its rate (CREMA-D WAVs are 16 kHz).
    target_rate, seconds, n_fft, hop: the official constants.

  Returns:
    [n_fft // 2 + 1, 1 + round(seconds * target_rate) // hop] float32.
  """
  x = resample(samples, sample_rate, target_rate)
  x = tile_to_length(x, int(round(seconds * target_rate)))
  x = np.clip(x, -1.0, 1.0)
  mag = stft_magnitude(x, n_fft, hop, center=True, pad_mode='constant')
  return np.log(mag + 1e-7).astype(np.float32)


# --------------------------------------------------------------------------
# Kinetics-Sounds: Kaldi log-mel filterbank.
# --------------------------------------------------------------------------
# Follows Kaldi's definition (src/feat/feature-window.{h,cc}: ExtractWindow /
# ProcessWindow; src/feat/mel-computations.cc: MelBanks; src/feat/feature-fbank.cc:
# FbankComputer::Compute), with the option values of `compute-fbank-feats`'
# defaults unless noted, which is also what torchaudio.compliance.kaldi.fbank
# computes: snip_edges=true, remove_dc_offset=true, preemphasis 0.97,
# round_to_power_of_two=true, low_freq 20 Hz, high_freq 0 (= Nyquist), power
# spectrum, log with a floor of float32 epsilon, use_energy=false.


def mel_scale(freq_hz):
  """Kaldi's MelScale: 1127 ln(1 + f / 700)."""
  return 1127.0 * np.log1p(np.asarray(freq_hz, np.float64) / 700.0)


def kaldi_window(kind: str, length: int) -> np.ndarray:
  """Kaldi's FeatureWindowFunction (symmetric windows, a = 2 pi / (N - 1))."""
  i = np.arange(length, dtype=np.float64)
  a = 2.0 * np.pi / (length - 1)
  if kind == 'hanning':
    return 0.5 - 0.5 * np.cos(a * i)
  if kind == 'povey':  # Kaldi's default: a Hann window raised to 0.85.
    return (0.5 - 0.5 * np.cos(a * i)) ** 0.85
  if kind == 'hamming':
    return 0.54 - 0.46 * np.cos(a * i)
  if kind == 'rectangular':
    return np.ones(length)
  raise ValueError(
      f"window_type={kind!r}: allowed 'povey', 'hanning', 'hamming', 'rectangular'")


def kaldi_mel_banks(num_bins: int, padded_window: int, sample_rate: float,
                    low_freq: float = 20.0, high_freq: float = 0.0) -> np.ndarray:
  """Kaldi's triangular mel filters on the FFT bins: [num_bins, padded_window // 2 + 1].

  Kaldi (MelBanks) builds the filters over the padded_window / 2 bins below
  Nyquist; the Nyquist column is kept at zero so the matrix multiplies a full
  rfft power spectrum.
  """
  nyquist = 0.5 * sample_rate
  if high_freq <= 0.0:
    high_freq += nyquist  # Kaldi: a non-positive high_freq is an offset from Nyquist.
  if not 0.0 <= low_freq < high_freq <= nyquist:
    raise ValueError(f'need 0 <= low_freq ({low_freq}) < high_freq ({high_freq}) '
                     f'<= Nyquist ({nyquist})')
  mel_low, mel_high = mel_scale(low_freq), mel_scale(high_freq)
  delta = (mel_high - mel_low) / (num_bins + 1)
  b = np.arange(num_bins, dtype=np.float64)[:, None]
  left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
  fft_bin_width = sample_rate / padded_window
  mel = mel_scale(fft_bin_width * np.arange(padded_window // 2))[None, :]
  up = (mel - left) / (center - left)
  down = (right - mel) / (right - center)
  banks = np.maximum(0.0, np.minimum(up, down))
  return np.pad(banks, ((0, 0), (0, 1)))


def kaldi_fbank(samples: np.ndarray, sample_rate: int, *, num_mel_bins: int = 128,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
                window_type: str = 'povey', preemphasis: float = 0.97,
                dither: float = 0.0, remove_dc_offset: bool = True,
                low_freq: float = 20.0, high_freq: float = 0.0,
                rng: np.random.Generator | None = None) -> np.ndarray:
  """Kaldi log-mel filterbank features: [frames, num_mel_bins] float32.

  The waveform is used at the scale given (torchaudio's [-1, 1] floats, not
  Kaldi's int16 scale, which would add log(32768^2) to every value).

  Args:
    samples: [N] mono waveform.
    sample_rate: its rate in Hz.
    num_mel_bins, frame_length_ms, frame_shift_ms, window_type, preemphasis,
      dither, remove_dc_offset, low_freq, high_freq: Kaldi's options.
    rng: source of dither noise (only used when dither > 0).

  Returns:
    [1 + (N - window) // shift, num_mel_bins] float32 (snip_edges framing);
    0 frames when N is shorter than one window.
  """
  x = np.asarray(samples, np.float64)
  window = int(sample_rate * frame_length_ms * 0.001)
  shift = int(sample_rate * frame_shift_ms * 0.001)
  padded = 1 << (window - 1).bit_length()  # round_to_power_of_two.
  if x.size < window:
    return np.zeros((0, num_mel_bins), np.float32)
  n_frames = 1 + (x.size - window) // shift  # snip_edges=true.
  frames = np.lib.stride_tricks.sliding_window_view(x, window)[::shift][:n_frames].copy()
  if dither != 0.0:
    rng = rng or np.random.default_rng(0)
    frames += dither * rng.standard_normal(frames.shape)
  if remove_dc_offset:
    frames -= frames.mean(axis=1, keepdims=True)
  if preemphasis != 0.0:
    # Kaldi's Preemphasize: x[i] -= c * x[i - 1] for i > 0, and x[0] -= c * x[0].
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - preemphasis * prev
  frames *= kaldi_window(window_type, window)[None, :]
  power = np.abs(np.fft.rfft(frames, n=padded, axis=1)) ** 2
  mel = power @ kaldi_mel_banks(num_mel_bins, padded, sample_rate, low_freq, high_freq).T
  # Kaldi floors at FLT_EPSILON before the log (FbankComputer::Compute).
  return np.log(np.maximum(mel, np.finfo(np.float32).eps)).astype(np.float32)


def pad_or_trim(x: np.ndarray, length: int, axis: int = 0) -> np.ndarray:
  """Zero-pads at the end or cuts `x` to `length` along `axis`."""
  n = x.shape[axis]
  if n >= length:
    return np.take(x, np.arange(length), axis=axis)
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - n)
  return np.pad(x, widths)


# --------------------------------------------------------------------------
# Video.
# --------------------------------------------------------------------------


def check_video_complete(path: str, min_coverage: float = 0.9) -> None:
  """Cheap first-pass check: the video packets reach the duration the header declares.

  Demuxes the video stream's packets without decoding them (a fraction of the cost
  of `decode_video_frames`), so a truncated copy is named in the first pass over
  all files instead of midway through the expensive one.

  Raises:
    MediaError: unreadable, without a video stream, or truncated.
  """
  import av  # pylint: disable=g-import-not-at-top
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise MediaError(f'{path} has no video stream')
      stream = container.streams.video[0]
      tb = stream.time_base
      declared = None
      if stream.duration is not None and tb is not None:
        declared = float(stream.duration * tb)
      elif container.duration is not None:
        declared = container.duration / 1e6
      first, end = None, None
      for packet in container.demux(stream):
        if packet.pts is None or tb is None:
          continue
        t = float(packet.pts * tb)
        first = t if first is None else min(first, t)
        t_end = t + float((packet.duration or 0) * tb)
        end = t_end if end is None else max(end, t_end)
  except MediaError:
    raise
  except Exception as e:  # av.error.* and OSError.
    raise MediaError(f'cannot open video {path}: {e}') from e
  if first is None:
    raise MediaError(f'{path}: no video packet could be read (corrupt or truncated)')
  span = end - first
  if declared is not None and declared > 0 and span < min_coverage * declared - 0.1:
    raise MediaError(f'video {path} is truncated: its packets reach {span:.2f} s of the '
                     f'{declared:.2f} s its header declares')


def decode_video_frames(path: str, fps: float, *, min_coverage: float = 0.9
                        ) -> list[np.ndarray]:
  """Decodes a video into RGB uint8 frames sampled at `fps` frames per second.

  Output frame k shows the decoded frame nearest to time k / fps (what FFmpeg's
  `-r fps` / fps filter produces), for every k with k / fps < duration.

  Args:
    path: a container FFmpeg reads (flv, mp4, ...).
    fps: output frame rate.
    min_coverage: the decoded frames must span at least this fraction of the
      duration the container declares; less means the file is truncated.

  Returns:
    list of [H, W, 3] uint8 frames.

  Raises:
    MediaError: unreadable, truncated, or without a video stream.
  """
  import av  # pylint: disable=g-import-not-at-top
  out: list[np.ndarray] = []
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise MediaError(f'{path} has no video stream')
      stream = container.streams.video[0]
      declared = None
      if stream.duration is not None and stream.time_base is not None:
        declared = float(stream.duration * stream.time_base)
      elif container.duration is not None:
        declared = container.duration / 1e6  # av.time_base is microseconds.
      rate = float(stream.average_rate or stream.guessed_rate or 25)
      start, prev, prev_t, k = None, None, None, 0
      for frame in container.decode(stream):
        t = frame.time
        if t is None:
          t = (prev_t + 1.0 / rate) if prev_t is not None else 0.0
        if start is None:
          start = t
        t -= start
        # Emit the previous frame for every output time closer to it than to this one.
        while prev is not None and k / fps < 0.5 * (prev_t + t):
          out.append(prev.to_ndarray(format='rgb24'))
          k += 1
        prev, prev_t = frame, t
      if prev is None:
        raise MediaError(f'{path}: no video frame could be decoded (corrupt or truncated)')
      end = prev_t + 1.0 / rate
      while k / fps < end:
        out.append(prev.to_ndarray(format='rgb24'))
        k += 1
  except MediaError:
    raise
  except Exception as e:  # av.error.* (InvalidDataError, ...) and OSError.
    raise MediaError(f'cannot decode video {path}: {e}') from e
  if declared is not None and declared > 0 and end < min_coverage * declared - 0.1:
    raise MediaError(
        f'video {path} is truncated: frames decode up to {end:.2f} s of the '
        f'{declared:.2f} s its header declares')
  return out


# --------------------------------------------------------------------------
# Images.
# --------------------------------------------------------------------------


IMAGE_EXTS = ('.jpg', '.jpeg', '.png')


def natural_key(name: str):
  """Sort key that orders frame_2.jpg before frame_10.jpg."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def list_images(folder: str) -> list[str]:
  """Image file names in `folder`, in natural (frame) order."""
  return sorted((f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS)),
                key=natural_key)


def read_frame_folder(folder: str, short_side: int, quality: int = 95) -> list[bytes]:
  """Compact JPEG bytes of every frame in a folder (each one fully decoded once)."""
  frames = []
  for n in list_images(folder):
    path = os.path.join(folder, n)
    with open(path, 'rb') as f:
      frames.append(frame_bytes(f.read(), short_side, quality, name=path))
  if not frames:
    raise MediaError(f'frame folder {folder} holds no .jpg/.png images')
  return frames


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  """[H, W, 3] uint8 -> JPEG bytes."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def decode_jpeg(data: bytes) -> Image.Image:
  """JPEG/PNG bytes -> RGB PIL image."""
  with Image.open(io.BytesIO(data)) as img:
    return img.convert('RGB')


def shrink_short_side(image: Image.Image, short_side: int) -> Image.Image:
  """Downscales so that min(H, W) == short_side; never upscales; 0 disables."""
  w, h = image.size
  if short_side <= 0 or min(w, h) <= short_side:
    return image
  scale = short_side / min(w, h)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return image.resize(size, Image.BILINEAR, reducing_gap=3.0)


def frame_bytes(image_or_bytes, short_side: int, quality: int = 95,
                name: str = 'frame') -> bytes:
  """Returns compact JPEG bytes for a frame (uint8 array or encoded bytes).

  Encoded frames are decoded in full once (so truncated files fail here, at
  prepare time); JPEGs already within `short_side` are kept byte for byte (no
  second generation loss), larger ones and raw arrays are (re-)encoded.
  """
  if isinstance(image_or_bytes, (bytes, bytearray)):
    try:
      img = decode_jpeg(bytes(image_or_bytes))  # convert() decodes every scanline.
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
      raise MediaError(f'cannot decode image {name}: {e}') from e
    small = shrink_short_side(img, short_side)
    if small is img and bytes(image_or_bytes[:3]) == b'\xff\xd8\xff':
      return bytes(image_or_bytes)
    return encode_jpeg(np.asarray(small), quality)
  img = shrink_short_side(Image.fromarray(np.asarray(image_or_bytes, np.uint8)), short_side)
  return encode_jpeg(np.asarray(img), quality)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)
                            ) -> tuple[int, int, int, int]:
  """torchvision RandomResizedCrop.get_params: (left, top, w, h) of the crop."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  # Fallback after 10 misses: the largest central crop within the ratio range.
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(image: Image.Image, size: int, rng: np.random.Generator
                        ) -> Image.Image:
  """RandomResizedCrop(size) with torchvision's defaults (bilinear)."""
  left, top, w, h = random_resized_crop_box(image.size[0], image.size[1], rng)
  return image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def resize(image: Image.Image, size: int) -> Image.Image:
  """Resize((size, size)): both sides to `size`, aspect ratio not kept (official eval)."""
  return image.resize((size, size), Image.BILINEAR)


def normalize_imagenet(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> float32, /255 then ImageNet mean/std (torchvision Normalize)."""
  x = images_uint8.astype(np.float32) / 255.0
  return (x - IMAGENET_MEAN) / IMAGENET_STD


def sample_frame_indices(n: int, k: int, train: bool,
                         rng: np.random.Generator | None) -> np.ndarray:
  """Chooses k of n frames: random sorted (train) or evenly spaced (eval).

  With fewer than k frames, train draws with replacement and eval repeats.
  """
  if n <= 0:
    raise ValueError('a clip without frames cannot be sampled')
  if train:
    return np.sort(rng.choice(n, size=k, replace=n < k))
  return np.round(np.linspace(0, n - 1, k)).astype(np.int64)


def frames_to_clip(frames: Sequence[bytes], *, train: bool, rng: np.random.Generator | None,
                   num_frames: int = 3, image_size: int = 224,
                   consistent_crop: bool = False) -> np.ndarray:
  """Encoded frames of one clip -> [num_frames, S, S, 3] float32 model input.

  Train: RandomResizedCrop(S) + horizontal flip with p=0.5; each frame draws its
  own crop and flip, as the official code transforms frame by frame
  (`consistent_crop=True` shares one draw across the clip). Eval: Resize((S, S)).
  Both then apply ImageNet normalisation.
  """
  idx = sample_frame_indices(len(frames), num_frames, train, rng)
  out = np.empty((num_frames, image_size, image_size, 3), np.uint8)
  shared = None
  for slot, i in enumerate(idx):
    img = decode_jpeg(frames[int(i)])
    if train:
      if consistent_crop:
        if shared is None:
          shared = (random_resized_crop_box(img.size[0], img.size[1], rng),
                    rng.random() < 0.5)
        (left, top, w, h), flip = shared
        img = img.resize((image_size, image_size), Image.BILINEAR,
                         box=(left, top, left + w, top + h))
      else:
        img = random_resized_crop(img, image_size, rng)
        flip = rng.random() < 0.5
      if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    else:
      img = resize(img, image_size)
    out[slot] = np.asarray(img, np.uint8)
  return normalize_imagenet(out)


def make_av_preprocess(data_cfg, train: bool):
  """fn(example, rng) -> {'audio': [F,T,1], 'visual': [T,S,S,3] float32, 'label': int32}.

  Shared by the audio-visual clip datasets (CREMA-D, Kinetics-Sounds): the stored
  spectrogram gains a channel axis; frames are sampled, cropped (train: random-resized
  crop + flip) or resized (eval) and ImageNet-normalised by `frames_to_clip`.
  """
  from data import prepare as prep  # pylint: disable=g-import-not-at-top
  num_frames = int(prep.cfg_get(data_cfg, 'num_frames', 3))
  size = int(prep.cfg_get(data_cfg, 'image_size', 224))
  consistent = bool(prep.cfg_get(data_cfg, 'consistent_crop', False))

  def preprocess(example: dict, rng: np.random.Generator | None = None) -> dict:
    if train and rng is None:
      raise ValueError('the train preprocessing draws crops and frames: pass an rng')
    audio = np.asarray(example['audio'], np.float32)[..., None]
    visual = frames_to_clip(list(example['frames']), train=train, rng=rng,
                            num_frames=num_frames, image_size=size, consistent_crop=consistent)
    return {'audio': audio, 'visual': visual, 'label': np.int32(example['label'])}

  return preprocess
