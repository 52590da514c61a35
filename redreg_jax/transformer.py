"""Transformer encoder for pre-extracted feature sequences (CMU-MOSI, docs/reproducing.md §Data).

One encoder per modality maps [B, T, D_in] features to a feature map
[B, T, dim] (the "last feature map" RedReg's redundancy score reads, Eq.17-20)
and a pooled feature [B, pooled_dim] (the z^m of the fusion head and of the
co-information gate, Eq.22-23, which needs equal sizes across modalities:
give every modality's encoder the same `pooled_dim`, or the same `dim`).

Architecture: Dense input projection -> learned positional embedding -> dropout
-> `num_layers` pre-LayerNorm blocks (self-attention, GELU MLP, residuals) ->
final LayerNorm -> mean over valid time steps (-> optional Dense to pooled_dim).
Linear layers use Xavier-uniform init (docs/reproducing.md §Data).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

_xavier = nn.initializers.xavier_uniform()


class EncoderBlock(nn.Module):
  """Pre-LN Transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

  num_heads: int
  dim: int
  mlp_dim: int
  dropout: float

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, mask_Bx1xTxT: Optional[jax.Array],
               train: bool) -> jax.Array:
    y = nn.LayerNorm(name='ln_attn')(x_BxTxD)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=self.dim, out_features=self.dim,
        dropout_rate=self.dropout, kernel_init=_xavier, name='attn')(
            y, y, mask=mask_Bx1xTxT, deterministic=not train)
    x_BxTxD = x_BxTxD + nn.Dropout(self.dropout)(y, deterministic=not train)
    y = nn.LayerNorm(name='ln_mlp')(x_BxTxD)
    y = nn.Dense(self.mlp_dim, kernel_init=_xavier, name='mlp_in')(y)
    y = nn.gelu(y)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    y = nn.Dense(self.dim, kernel_init=_xavier, name='mlp_out')(y)
    return x_BxTxD + nn.Dropout(self.dropout)(y, deterministic=not train)


class SequenceTransformerEncoder(nn.Module):
  """[B, T, D_in] -> (feature_map [B, T, dim], pooled [B, pooled_dim or dim]).

  Attributes:
    num_layers: number of pre-LN blocks.
    num_heads: attention heads; must divide `dim`.
    dim: model width (feature-map channels).
    mlp_dim: hidden width of each block's MLP.
    dropout: dropout rate (embeddings, attention weights, residual branches).
    max_len: longest sequence the positional embedding covers.
    pooled_dim: size of the pooled feature; None keeps `dim` (pure mean
      pooling), otherwise a Dense maps the mean to this size.
  """

  num_layers: int
  num_heads: int
  dim: int
  mlp_dim: int
  dropout: float = 0.1
  max_len: int = 512
  pooled_dim: Optional[int] = None

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, train: bool,
               mask_BxT: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Encodes a batch of sequences.

    Args:
      x_BxTxD: input features.
      train: enables dropout (needs a 'dropout' rng).
      mask_BxT: optional bool, True at real (non-padding) steps; padding is
        neither attended to nor pooled. None = every step is real.

    Returns:
      (feature_map [B, T, dim], pooled [B, pooled_dim or dim]).
    """
    if self.dim % self.num_heads:
      raise ValueError(f'SequenceTransformerEncoder: num_heads={self.num_heads} must '
                       f'divide dim={self.dim}')
    if x_BxTxD.ndim != 3:
      raise ValueError(f'expected [B, T, D] inputs, got shape {x_BxTxD.shape}')
    t = x_BxTxD.shape[1]
    if t > self.max_len:
      raise ValueError(f'sequence length {t} exceeds max_len={self.max_len}; raise '
                       'max_len in the model config')
    h = nn.Dense(self.dim, kernel_init=_xavier, name='input_proj')(x_BxTxD)
    pos_1xLxD = self.param('pos_embedding', nn.initializers.normal(stddev=0.02),
                           (1, self.max_len, self.dim))
    h = h + pos_1xLxD[:, :t].astype(h.dtype)
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    attn_mask = None
    if mask_BxT is not None:
      mask_BxT = mask_BxT.astype(bool)
      attn_mask = nn.make_attention_mask(mask_BxT, mask_BxT)  # [B, 1, T, T]
    for i in range(self.num_layers):
      h = EncoderBlock(self.num_heads, self.dim, self.mlp_dim, self.dropout,
                       name=f'block_{i}')(h, attn_mask, train)
    feature_map_BxTxD = nn.LayerNorm(name='ln_final')(h)
    if mask_BxT is None:
      pooled_BxD = jnp.mean(feature_map_BxTxD, axis=1)
    else:
      w_BxTx1 = mask_BxT[..., None].astype(feature_map_BxTxD.dtype)
      pooled_BxD = (jnp.sum(feature_map_BxTxD * w_BxTx1, axis=1)
                    / jnp.maximum(jnp.sum(w_BxTx1, axis=1), 1.0))
    if self.pooled_dim is not None:
      pooled_BxD = nn.Dense(self.pooled_dim, kernel_init=_xavier, name='pool_proj')(pooled_BxD)
    return feature_map_BxTxD, pooled_BxD
