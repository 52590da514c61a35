"""Flax models: ResNet-18 encoders, four fusions, heads and branch logits (docs/methods.md §Setting, §6).

Parameter layout (what label functions and transforms rely on):
  params['encoder_<modality>']   one encoder per modality
  params['fusion']               the fused classifier (a linear head inside the fusion)
  params['head_<modality>']      optional unimodal heads Linear(d_m, K) (the "*" variants)
  Intermediate fusion ('greedy_bypass', Greedy's model), inside params['fusion']:
  params['fusion']['branch_<m>'] branch m's own head (labelled m, like its encoder)
  params['fusion']['bypass_<m>'] the excitation carrying the other modality into branch m
                                 (labelled 'bypass/<m>')
  params['fusion']['bypass']     the joint squeeze both excitations read ('bypass', shared)

Subset logits (modality Shapley values, `metrics.modality_contributions`): for a subset S
of the modalities, the fused head applied with the pooled features z_m of every m not in
S set to zero, before the fusion, with the full bias (never split). What that zero means
per fusion:
  concat  sum_{m in S} W_m z_m + b; S empty: b.
  sum     sum_{m in S} (W_m z_m + b_m) + sum_{m not in S} b_m (each fc_m keeps its bias).
  film    gamma, beta = FiLM(z_c) of the conditioning (first) modality c; zeroing c
          leaves gamma, beta = the FiLM bias; a zeroed target slice is gamma * 0 + beta,
          so c still acts there through beta.
  gated   gate = sigmoid(G z_c + g_b) times value(concat of the others); zeroing c leaves
          sigmoid(g_b), zeroing every other modality leaves gate * value bias.
  greedy_bypass  the mean of the two branch heads on the zeroed features: a zeroed z_m
          still enters the joint squeeze as zeros (the other branch's excitation keeps
          the squeeze bias), and branch m predicts head_m(0) = its bias.
Singleton subsets are the branch logits of docs/methods.md §Setting (with branch_bias='full' and no
unimodal heads; not for greedy_bypass, whose branch logits are its branches' own
predictions); the full subset is the fused logits.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's ResNet init: Kaiming normal, fan_out, ReLU gain (docs/reproducing.md §Data).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# Xavier (Glorot) uniform for every linear layer (docs/reproducing.md §Data).
dense_init = nn.initializers.xavier_uniform()
# The classifier's linear layers (fusion and unimodal heads) by `linear_init`: the
# released RedReg code draws them Xavier-normal.
LINEAR_INITS = {"xavier_uniform": dense_init, "xavier_normal": nn.initializers.xavier_normal()}

RESNET18_WIDTHS = (64, 128, 256, 512)


def _batch_norm(train: bool, dtype, name=None):
  # PyTorch defaults: momentum 0.1 (flax: 0.9 on the running average), eps 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """ResNet basic block: two 3x3 convolutions and a (projected) shortcut."""
  filters: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, name: nn.Conv(f, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2,
                                         use_bias=False, kernel_init=conv_init,
                                         dtype=self.dtype, name=name)
    y = conv(self.filters, 3, self.strides, "conv1")(x)
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
    y = conv(self.filters, 3, 1, "conv2")(y)
    y = _batch_norm(train, self.dtype, "bn2")(y)
    if x.shape[-1] != self.filters or self.strides != 1:
      x = conv(self.filters, 1, self.strides, "proj_conv")(x)
      x = _batch_norm(train, self.dtype, "proj_bn")(x)
    return nn.relu(x + y)


def resnet18_widths(width: float) -> list[int]:
  """Channels of the four stages; the last is the pooled feature size."""
  return [max(1, int(round(w * width))) for w in RESNET18_WIDTHS]


class ResNet18(nn.Module):
  """ResNet-18 trunk; returns the last feature map [N, h, w, 512 * width].

  `blocks_per_stage` 2 is ResNet-18 (He et al. 2016, Table 1); 1 keeps every stage, its
  strides and its projected shortcut with one basic block each (a ResNet-10), which
  compiles faster: the tests' toy configs use it.
  """
  width: float = 1.0
  dtype: Any = jnp.float32
  blocks_per_stage: int = 2

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool):
    widths = resnet18_widths(self.width)
    x = nn.Conv(widths[0], (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                kernel_init=conv_init, dtype=self.dtype, name="conv_init")(
                    x_NxHxWxC.astype(self.dtype))
    x = nn.relu(_batch_norm(train, self.dtype, "bn_init")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
    for stage, filters in enumerate(widths):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(filters, strides, self.dtype, name=f"stage{stage + 1}_block{block + 1}")(
            x, train)
    return x


class ResNet18Encoder(nn.Module):
  """Encoder phi_m: raw input -> (last feature map, pooled feature z_m).

  Audio: [B, F, T, 1] spectrograms. Visual: [B, T, H, W, C] frames, folded into the
  batch and average-pooled over time and space (docs/reproducing.md §Data).
  """
  width: float = 1.0
  dtype: Any = jnp.float32
  blocks_per_stage: int = 2

  @nn.compact
  def __call__(self, x, train: bool):
    resnet = ResNet18(self.width, self.dtype, self.blocks_per_stage, name="resnet")
    if x.ndim == 5:
      b, t = x.shape[:2]
      fmap = resnet(x.reshape((b * t,) + x.shape[2:]), train)
      fmap_BxTxhxwxD = fmap.reshape((b, t) + fmap.shape[1:])
      pooled_BxD = jnp.mean(fmap_BxTxhxwxD.astype(jnp.float32), axis=(1, 2, 3))
      return fmap_BxTxhxwxD, pooled_BxD
    if x.ndim != 4:
      raise ValueError(f"ResNet18Encoder expects [B,H,W,C] or [B,T,H,W,C] input, got {x.shape}")
    fmap_BxhxwxD = resnet(x, train)
    return fmap_BxhxwxD, jnp.mean(fmap_BxhxwxD.astype(jnp.float32), axis=(1, 2))


class MLPEncoder(nn.Module):
  """Encoder for per-example feature vectors [B, D]: two ReLU Dense layers of `hidden`.

  The last hidden activation is both the "feature map" (RedReg's redundancy score,
  Eq.17-20) and the pooled feature z_m.
  """
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxD, train: bool):
    del train  # No BatchNorm or dropout.
    if x_BxD.ndim != 2:
      raise ValueError(f"MLPEncoder expects [B, D] input, got {x_BxD.shape}")
    h = x_BxD.astype(self.dtype)
    for i in range(2):
      h = nn.relu(nn.Dense(self.hidden, kernel_init=dense_init, dtype=self.dtype,
                           name=f"dense{i + 1}")(h))
    return h, h.astype(jnp.float32)


CONV4_CHANNELS = (32, 32, 64, 64)


class Conv4Encoder(nn.Module):
  """PMR/MMPareto's CG-MNIST encoder: 4 convolutions, average pool, Linear to `dim`.

  PMR's released `convnet` (models/basic_model.py; PMR §5.2, MMPareto §4.1 "4 convolution
  layers and 1 average pool layer"): BatchNorm on the input, conv 5x5 s1 -> ReLU ->
  max-pool 3x3 s2 -> conv 3x3 s1 -> ReLU -> conv 3x3 s2 -> ReLU -> conv 3x3 s1 -> ReLU
  (channels 32, 32, 64, 64 times `width`; 28x28 -> 14x14 -> 7x7), then a global average
  pool and Linear(64, dim). Returns (the last ReLU map [B, h, w, C], the Linear output
  [B, dim]); `dim` (512, as PMR) is the pooled size, the same for every modality.
  """
  dim: int = 512
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool):
    if x_BxHxWxC.ndim != 4:
      raise ValueError(f"Conv4Encoder expects [B, H, W, C] input, got {x_BxHxWxC.shape}")
    chans = [max(1, int(round(c * self.width))) for c in CONV4_CHANNELS]
    conv = lambda f, k, s, name: nn.Conv(f, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2,
                                         kernel_init=conv_init, dtype=self.dtype, name=name)
    x = _batch_norm(train, self.dtype, "bn0")(x_BxHxWxC.astype(self.dtype))
    x = nn.relu(conv(chans[0], 5, 1, "conv1")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
    x = nn.relu(conv(chans[1], 3, 1, "conv2")(x))
    x = nn.relu(conv(chans[2], 3, 2, "conv3")(x))
    fmap_BxhxwxC = nn.relu(conv(chans[3], 3, 1, "conv4")(x))
    # PMR's AvgPool2d(7) on the 7x7 map: a global average pool for 28x28 inputs.
    pooled = jnp.mean(fmap_BxhxwxC.astype(jnp.float32), axis=(1, 2))
    z_BxD = nn.Dense(self.dim, kernel_init=dense_init, name="fc")(pooled)
    return fmap_BxhxwxC, z_BxD


ENCODER_KINDS = ("resnet18", "transformer", "mlp", "conv4")


def make_encoder(kind: str, width: float, dtype, name=None, **kwargs) -> nn.Module:
  """Builds an encoder module of the given kind."""
  if kind == "resnet18":
    unknown = sorted(set(kwargs) - {"blocks"})
    if unknown:
      raise ValueError(f"Unknown resnet18 encoder option(s) {unknown}; valid: width, blocks.")
    return ResNet18Encoder(width=width, dtype=dtype,
                           blocks_per_stage=int(kwargs.get("blocks", 2)), name=name)
  if kind == "transformer":
    from redreg_jax import transformer  # pylint: disable=g-import-not-at-top
    return transformer.SequenceTransformerEncoder(name=name, **kwargs)
  if kind == "mlp":
    unknown = sorted(set(kwargs) - {"hidden"})
    if unknown:
      raise ValueError(f"Unknown mlp encoder option(s) {unknown}; valid: hidden.")
    return MLPEncoder(hidden=int(kwargs.get("hidden", resnet18_widths(width)[-1])),
                      dtype=dtype, name=name)
  if kind == "conv4":
    unknown = sorted(set(kwargs) - {"dim"})
    if unknown:
      raise ValueError(f"Unknown conv4 encoder option(s) {unknown}; valid: width, dim.")
    return Conv4Encoder(dim=int(kwargs.get("dim", 512)), width=width, dtype=dtype, name=name)
  raise ValueError(f"Unknown encoder kind {kind!r}; valid: {', '.join(ENCODER_KINDS)}.")


def default_encoder_spec(modality: str, shape: Sequence[int], width: float) -> dict:
  """The encoder a modality gets when `config.model.encoders` names none, by input rank.

  [H, W, C] -> 2-D ResNet-18; [T, H, W, C] -> ResNet-18 with frames folded into the
  batch; [L, D] sequences -> a 2-layer Transformer; [D] vectors -> an MLP. The
  Transformer and MLP pool to the ResNet's feature size (512 * width), so every
  modality has one pooled size, as co-information (RedReg Eq.22-23) needs.
  """
  dim = resnet18_widths(width)[-1]
  rank = len(shape)
  if rank in (3, 4):
    return {"kind": "resnet18"}
  if rank == 2:
    return {"kind": "transformer", "num_layers": 2, "num_heads": 4, "dim": 64,
            "mlp_dim": 128, "dropout": 0.1, "max_len": int(shape[0]), "pooled_dim": dim}
  if rank == 1:
    return {"kind": "mlp", "hidden": dim}
  raise ValueError(f"No default encoder for modality {modality!r} with per-example shape "
                   f"{tuple(shape)}: expected [D], [L, D], [H, W, C] or [T, H, W, C]. Reshape "
                   f"the data or set config.model.encoders.{modality} (kinds: "
                   f"{', '.join(ENCODER_KINDS)}).")


# --------------------------------------------------------------------------------------
# Fusions: each maps {modality: z_m [B, D_m]} -> fused logits [B, K].
# The official OGM-GE code defines Sum/Concat/FiLM/Gated for two modalities; here they
# take M >= 2. FiLM and gated condition on `modalities[0]` and modulate the others'
# concatenation.
# --------------------------------------------------------------------------------------


class ConcatFusion(nn.Module):
  num_classes: int
  modalities: Sequence[str]
  kernel_init: Any = dense_init

  @nn.compact
  def __call__(self, feats: Mapping[str, jax.Array]):
    z = jnp.concatenate([feats[m] for m in self.modalities], axis=-1)
    return nn.Dense(self.num_classes, kernel_init=self.kernel_init, name="head")(z)


class SumFusion(nn.Module):
  num_classes: int
  modalities: Sequence[str]
  kernel_init: Any = dense_init

  @nn.compact
  def __call__(self, feats):
    return sum(nn.Dense(self.num_classes, kernel_init=self.kernel_init, name=f"fc_{m}")(feats[m])
               for m in self.modalities)


class FiLMFusion(nn.Module):
  """Feature-wise linear modulation: gamma, beta from the first modality."""
  num_classes: int
  modalities: Sequence[str]
  kernel_init: Any = dense_init
  hidden: int = 0  # 0: the size of the modulated features.

  @nn.compact
  def __call__(self, feats):
    cond = feats[self.modalities[0]]
    target = jnp.concatenate([feats[m] for m in self.modalities[1:]], axis=-1)
    gamma_beta = nn.Dense(2 * target.shape[-1], kernel_init=self.kernel_init, name="film")(cond)
    gamma, beta = jnp.split(gamma_beta, 2, axis=-1)
    h = gamma * target + beta
    if self.hidden:
      h = nn.Dense(self.hidden, kernel_init=self.kernel_init, name="hidden")(h)
    return nn.Dense(self.num_classes, kernel_init=self.kernel_init, name="head")(h)


class GatedFusion(nn.Module):
  """Sigmoid gate from the first modality on a projection of the others."""
  num_classes: int
  modalities: Sequence[str]
  kernel_init: Any = dense_init
  hidden: int = 0  # 0: the size of the gated features.

  @nn.compact
  def __call__(self, feats):
    cond = feats[self.modalities[0]]
    target = jnp.concatenate([feats[m] for m in self.modalities[1:]], axis=-1)
    dim = self.hidden or target.shape[-1]
    gate = nn.sigmoid(nn.Dense(dim, kernel_init=self.kernel_init, name="gate")(cond))
    value = nn.Dense(dim, kernel_init=self.kernel_init, name="value")(target)
    return nn.Dense(self.num_classes, kernel_init=self.kernel_init, name="head")(gate * value)


class BypassFusion(nn.Module):
  """Greedy's intermediate fusion: two branches coupled by an MMTM excitation (§Greedy).

  Branch m predicts y_m = head_m(z_m * e_m) with the excitation

    e_m = sigmoid(W_m relu(W_s [z_0, z_1] + b_s) + b_m),

  MMTM's squeeze (W_s, shared) and excitation (W_m) on the pooled features, which is the
  released Greedy model's last MMTM (after ResNet layer 4, where a per-channel scale
  commutes with the average pool). e_m is how the other modality reaches branch m: its
  parameters are branch m's "bypass". The fused logits are (y_0 + y_1) / 2.

  Re-balancing (`cut` = i): branch i's excitation is replaced by the running mean of
  e_i over the training forward passes before this one (batch_stats
  'excitation_mean_<m>'), a constant, so y_i depends on z_i alone and no gradient
  reaches W_i. Training forward passes (`update_mean`) fold the batch mean of the
  computed e_m into that mean, whether or not it was cut.
  """
  num_classes: int
  modalities: Sequence[str]
  kernel_init: Any = dense_init
  ratio: int = 4  # Squeeze width int(2 (D_0 + D_1) / ratio), the released MMTM's (ratio 4).

  branched = True  # The classifier reads the branches' own predictions (not a zeroed head).

  @nn.compact
  def __call__(self, feats, *, branches: bool = False, cut=None, update_mean: bool = False):
    """Fused logits [B, K]; with `branches`, {m: y_m [B, K]}.

    Args:
      feats: {m: z_m [B, D_m]} for the two modalities.
      branches: return each branch's logits instead of their mean.
      cut: [] int32 or None: the branch (index in `modalities`) whose excitation is its
        running mean this pass; -1 or None: none.
      update_mean: fold this batch's mean excitations into the running means (training
        forward passes only; never on init).
    """
    if len(self.modalities) != 2:
      raise ValueError(f"The greedy_bypass fusion joins exactly two modalities (Greedy's two "
                       f"branches); got {len(self.modalities)} ({', '.join(self.modalities)}). "
                       "Set config.modalities to two of them, or another config.model.fusion.")
    z = [feats[m].astype(jnp.float32) for m in self.modalities]
    hidden = max(1, int(2 * (z[0].shape[-1] + z[1].shape[-1]) / self.ratio))
    squeeze_BxH = nn.relu(nn.Dense(hidden, kernel_init=self.kernel_init, name="bypass")(
        jnp.concatenate(z, axis=-1)))
    count = self.variable("batch_stats", "excitation_count", jnp.zeros, (), jnp.float32)
    update = update_mean and self.is_mutable_collection("batch_stats") and \
        not self.is_initializing()
    out = {}
    for i, (m, z_BxD) in enumerate(zip(self.modalities, z)):
      e_BxD = nn.sigmoid(nn.Dense(z_BxD.shape[-1], kernel_init=self.kernel_init,
                                  name=f"bypass_{m}")(squeeze_BxH))
      mean = self.variable("batch_stats", f"excitation_mean_{m}", jnp.zeros,
                           (z_BxD.shape[-1],), jnp.float32)
      used_BxD = e_BxD
      if cut is not None:
        used_BxD = jnp.where(jnp.asarray(cut) == i, mean.value[None, :], e_BxD)
      if update:  # Cumulative mean over the training passes (the released running average).
        batch_mean = jax.lax.stop_gradient(jnp.mean(e_BxD, axis=0))
        mean.value = mean.value + (batch_mean - mean.value) / (count.value + 1.0)
      out[m] = nn.Dense(self.num_classes, kernel_init=self.kernel_init, name=f"branch_{m}")(
          z_BxD * used_BxD)
    if update:
      count.value = count.value + 1.0
    if branches:
      return out
    return (out[self.modalities[0]] + out[self.modalities[1]]) / 2


FUSIONS = {"concat": ConcatFusion, "sum": SumFusion, "film": FiLMFusion, "gated": GatedFusion,
           "greedy_bypass": BypassFusion}


class MultimodalClassifier(nn.Module):
  """Encoders + fusion + optional unimodal heads.

  Returns a dict with
    logits         [B, K] fused logits
    branch_logits  {m: [B, K]} per-modality logits as docs/methods.md §Setting defines them
    features       {m: [B, D_m]} pooled encoder features
    unimodal_logits {m: [B, K]} (only with unimodal heads)
    subset_logits  {subset: [B, K]} (only when called with `subsets`; see the module doc)
  A branched fusion (`greedy_bypass`) gives its branches' own predictions as branch
  logits and their mean as the fused logits.
  """
  modalities: Sequence[str]
  num_classes: int
  fusion: str = "concat"
  encoders: Mapping[str, Mapping[str, Any]] | None = None  # m -> {kind, width, ...}
  width: float = 1.0
  unimodal_heads: bool = False
  branch_bias: str = "full"  # 'full': W_m z_m + b; 'split': W_m z_m + b/M (OGM/InfoReg)
  dtype: Any = jnp.float32
  linear_init: str = "xavier_uniform"  # fusion and unimodal heads (see LINEAR_INITS)

  @nn.nowrap
  def encoder(self, m: str, name=None) -> nn.Module:
    """The encoder of modality m; unbound, apply it with variables[...]['encoder_' + m]."""
    spec = dict((self.encoders or {}).get(m, {}))
    kind = spec.pop("kind", "resnet18")
    width = spec.pop("width", self.width)
    return make_encoder(kind, width, self.dtype, name=name, **spec)

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], train: bool,
               subsets: Sequence[Sequence[str]] | None = None,
               fusion_kwargs: Mapping[str, Any] | None = None):
    """Forward pass; `subsets` (e.g. `all_subsets(modalities)`) adds 'subset_logits'.

    `fusion_kwargs`: extra arguments of a branched fusion's main pass (Greedy's `cut`).
    """
    if self.fusion not in FUSIONS:
      raise ValueError(f"Unknown fusion {self.fusion!r}; valid: {sorted(FUSIONS)}")
    feats = {}
    for m in self.modalities:
      _, feats[m] = self.encoder(m, name=f"encoder_{m}")(inputs[m], train)
    if self.linear_init not in LINEAR_INITS:
      raise ValueError(f"Unknown linear_init {self.linear_init!r}; valid: {sorted(LINEAR_INITS)}")
    head_init = LINEAR_INITS[self.linear_init]
    fusion = FUSIONS[self.fusion](self.num_classes, tuple(self.modalities), head_init,
                                  name="fusion")
    branched = getattr(fusion, "branched", False)
    if branched:  # Intermediate fusion: the branches' predictions and their mean.
      branches = fusion(feats, branches=True, update_mean=train, **dict(fusion_kwargs or {}))
      logits = sum(branches[m] for m in self.modalities) / len(self.modalities)
    else:
      if fusion_kwargs:
        raise ValueError(f"The {self.fusion!r} fusion takes no fusion_kwargs (got "
                         f"{sorted(fusion_kwargs)}); only a branched fusion (greedy_bypass) does.")
      logits = fusion(feats)
    out = {"logits": logits, "features": feats}
    if self.unimodal_heads:
      out["unimodal_logits"] = {
          m: nn.Dense(self.num_classes, kernel_init=head_init, name=f"head_{m}")(feats[m])
          for m in self.modalities}
      out["branch_logits"] = dict(out["unimodal_logits"])
    elif branched:
      out["branch_logits"] = branches
    else:
      out["branch_logits"] = self._branch_logits(fusion, feats)
    if subsets is not None:
      out["subset_logits"] = self._subset_logits(fusion, feats, logits, subsets)
    return out

  def _subset_logits(self, fusion, feats, logits, subsets):
    """{subset: fused head with the pooled features outside the subset zeroed}."""
    out = {}
    for s in subsets:
      unknown = sorted(set(s) - set(self.modalities))
      if unknown:
        raise ValueError(f"subset {tuple(s)} names {unknown}, not among "
                         f"{list(self.modalities)}.")
      key = tuple(m for m in self.modalities if m in s)  # One key per subset, model order.
      if len(key) == len(self.modalities):  # Nothing zeroed: the fused logits themselves.
        out[key] = logits
      else:
        out[key] = fusion({m: f if m in key else jnp.zeros_like(f) for m, f in feats.items()})
    return out

  def _branch_logits(self, fusion, feats):
    """Fused head with every other modality's feature zeroed (docs/methods.md §Setting)."""
    zeros = {m: jnp.zeros_like(f) for m, f in feats.items()}
    branch = {m: fusion({**zeros, m: feats[m]}) for m in self.modalities}
    if self.branch_bias == "split":
      # Shares the head's bias equally: W_m z_m + b/M for concat (OGM-GE, InfoReg).
      bias = fusion(zeros)
      frac = 1.0 - 1.0 / len(self.modalities)
      branch = {m: v - frac * bias for m, v in branch.items()}
    elif self.branch_bias != "full":
      raise ValueError(f"Unknown branch_bias {self.branch_bias!r}; valid: 'full', 'split'.")
    return branch


def all_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
  """Every subset of the modalities, by size (empty first), each in the modalities' order."""
  mods = tuple(modalities)
  return [c for k in range(len(mods) + 1) for c in itertools.combinations(mods, k)]


def subset_logits(model: MultimodalClassifier, variables, inputs: Mapping[str, jax.Array],
                  subsets: Sequence[Sequence[str]] | None = None) -> dict:
  """Inference-mode fused logits per modality subset (features outside it zeroed).

  Args:
    model: the classifier.
    variables: {'params': ..., 'batch_stats': ...} as for `model.apply`.
    inputs: {modality: batch}.
    subsets: the subsets to evaluate (default: all 2^M).
  Returns:
    {subset (tuple in the model's modality order): [B, K] logits}.
  """
  subsets = all_subsets(model.modalities) if subsets is None else subsets
  return model.apply(variables, inputs, train=False, subsets=subsets)["subset_logits"]


def modality_labels(params) -> Any:
  """Label tree: leaves of params['encoder_<m>'] -> m, every other leaf -> 'head'.

  Inside params['fusion'] of an intermediate fusion (the module doc's layout):
  'branch_<m>' -> m (the branch's own head), 'bypass_<m>' -> 'bypass/<m>',
  'bypass' -> 'bypass' (greedy.BYPASS_PREFIX, greedy.SHARED_BYPASS). The other
  fusions have no such names, so their heads stay 'head'.
  """
  key = lambda k: getattr(k, "key", str(k))

  def label(path, _):
    top = key(path[0])
    if top.startswith("encoder_"):
      return top[len("encoder_"):]
    if top == "fusion" and len(path) > 2:
      sub = key(path[1])
      if sub == "bypass":
        return "bypass"
      if sub.startswith("bypass_"):
        return "bypass/" + sub[len("bypass_"):]
      if sub.startswith("branch_"):
        return sub[len("branch_"):]
    return "head"
  return jax.tree_util.tree_map_with_path(label, params)
