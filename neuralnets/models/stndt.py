"""STNDT: spatiotemporal Neural Data Transformer (Le & Shlizerman 2022, "STNDT: Modeling Neural
Population Activity with a Spatiotemporal Transformer"), built from the paper's description.

NDT (`models/ndt.py`) attends over time: each bin's held-in population vector is a token. STNDT adds a
spatial stream in which each held-in neuron is a token (its time series over the T bins plus a learned
neuron embedding), giving an N_in x N_in attention matrix between neurons. In every layer the spatial
attention re-mixes the neuron axis of the temporal attention's output,
    Z_ST[b, t, i] = sum_j A_S[b, i, j] * Z_T[b, t, j],
followed by residual, norm and feed-forward as in a (pre-norm) transformer block. The neuron axis must stay
the neuron axis for this, so tokens are the raw held-in counts (width N_in, as in the NDT paper) plus a
learned position embedding; the attention projections have their own width `attn_dim`.

Training: NDT's masked modelling (the same bin masking and `recon_mask`, from `models/ndt.py`) plus a
contrastive loss: two randomly augmented views of each trial's input (`nn.augmentations.augment_spikes`:
dropped and added spikes, small time shifts) are encoded, their time-pooled hidden states projected by a
small MLP, and scored with InfoNCE / NT-Xent at temperature `temperature` (the two views of a trial are the
positive pair, the other trials' views the negatives). It is returned as `aux_losses["contrastive"]`,
weighted by `contrastive_weight` (lambda) through `aux_weights`. It costs two extra forward passes per
training step; in eval mode nothing is masked or augmented and `aux_losses` is empty.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralnets.data.spikedata import DataSpec
from neuralnets.models.base import ModelOutput, Ramp, SpikeModel, get_heldin, positive_rates
from neuralnets.models.ndt import bin_recon_mask, check_transformer_options, context_mask, mask_bins
from neuralnets.nn.augmentations import augment_spikes


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent / InfoNCE loss (Chen et al. 2020) of paired embeddings `z1, z2 (B, D)` -> scalar (nats).

    Each of the 2B embeddings must pick out its partner among the other 2B - 1 by cosine similarity / tau.
    """
    B = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2B, D)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(z.device)  # (2B,)
    return F.cross_entropy(sim, partner)


class TemporalAttention(nn.Module):
    """Multi-head self-attention over bins for tokens of width `width`, with projections of width
    `attn_dim` (so the token width need not divide into heads). x (B, T, width) -> (B, T, width)."""

    def __init__(self, width: int, attn_dim: int, n_heads: int, dropout_attention: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout_attention = dropout_attention
        self.qkv = nn.Linear(width, 3 * attn_dim)
        self.out = nn.Linear(attn_dim, width)

    def forward(self, x: Tensor, blocked: Tensor | None) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, hd)
        allowed = None if blocked is None else ~blocked  # (T, T): SDPA's bool mask means "may attend"
        p = self.dropout_attention if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)  # (B, h, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, width)


class SpatialAttention(nn.Module):
    """Attention weights between neurons: tokens are neurons' time series (B, N_in, T) plus a neuron
    embedding, projected to queries and keys of width `spatial_dim`. -> A_S (B, N_in, N_in), rows sum to 1."""

    def __init__(self, n_bins: int, spatial_dim: int, dropout_attention: float):
        super().__init__()
        self.query = nn.Linear(n_bins, spatial_dim)
        self.key = nn.Linear(n_bins, spatial_dim)
        self.dropout = nn.Dropout(dropout_attention)

    def forward(self, tokens: Tensor) -> Tensor:
        q, k = self.query(tokens), self.key(tokens)  # (B, N_in, d_s) each
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, N_in, N_in)
        return self.dropout(weights)


class SpatioTemporalLayer(nn.Module):
    """One pre-norm STNDT block on h (B, T, N_in): temporal attention, its neuron axis re-mixed by the
    spatial attention (when `spatial`), residual; then feed-forward, residual."""

    def __init__(
        self,
        n_bins: int,
        width: int,
        attn_dim: int,
        n_heads: int,
        spatial_dim: int,
        ff_dim: int,
        dropout: float,
        dropout_attention: float,
        spatial: bool,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.temporal = TemporalAttention(width, attn_dim, n_heads, dropout_attention)
        self.spatial = SpatialAttention(n_bins, spatial_dim, dropout_attention) if spatial else None
        self.norm2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(
            nn.Linear(width, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, width)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, neuron_pos: Tensor, blocked: Tensor | None) -> tuple[Tensor, Tensor | None]:
        a = self.norm1(h)  # (B, T, N_in)
        z = self.temporal(a, blocked)  # (B, T, N_in): Z_T
        weights = None
        if self.spatial is not None:
            weights = self.spatial(a.transpose(1, 2) + neuron_pos)  # (B, N_in, N_in): A_S
            z = z @ weights.transpose(1, 2)  # (B, T, N_in): Z_ST[t, i] = sum_j A_S[i, j] Z_T[t, j]
        h = h + self.dropout(z)
        h = h + self.dropout(self.ff(self.norm2(h)))  # (B, T, N_in)
        return h, weights


class STNDT(SpikeModel):
    """Spatiotemporal masked-modelling transformer with a contrastive auxiliary loss.

    Args:
        spec: the data spec (or its dict).
        n_layers, n_heads: depth and temporal attention heads.
        attn_dim: width of the temporal attention's queries, keys and values; None = the number of held-in
            neurons rounded up to a multiple of `n_heads` (NDT's d_model rule).
        spatial_dim: width of the spatial attention's queries and keys; None = the number of bins T.
        spatial: use the spatial attention (False: an NDT-like temporal-only transformer, for ablation).
        ff_dim: feed-forward hidden size; None = 4 * held-in neurons.
        dropout, dropout_embedding, dropout_attention, context_forward, context_backward: as in `NDT`.
        scale_input, mask_ratio, mask_token_ratio, mask_random_ratio: as in `NDT` (scale_input multiplies
            the input counts by sqrt(held-in neurons) before the position embedding is added).
        contrastive_weight: lambda, the weight of the contrastive loss (0 = off: no extra passes).
        temperature: tau of NT-Xent. projection_dim: output width of the projection MLP.
        aug_drop_rate, aug_add_rate, aug_max_shift: the views' augmentations (`augment_spikes`).

    forward(batch) -> ModelOutput with rates (B, T, N) in counts per bin, latents (B, T, N_in) = the final
    (layer-normed) hidden states the readout reads, and in train mode recon_mask (B, T, N) and, with
    contrastive_weight > 0, aux_losses["contrastive"].
    """

    masks_input = True  # masked modelling: coordinated dropout on top would hide the input twice

    def __init__(
        self,
        spec: DataSpec | dict,
        n_layers: int = 2,
        n_heads: int = 2,
        attn_dim: int | None = None,
        spatial_dim: int | None = None,
        spatial: bool = True,
        ff_dim: int | None = None,
        dropout: float = 0.2,
        dropout_embedding: float = 0.2,
        dropout_attention: float = 0.2,
        context_forward: int | None = None,
        context_backward: int | None = None,
        scale_input: bool = True,
        mask_ratio: float = 0.25,
        mask_token_ratio: float = 0.8,
        mask_random_ratio: float = 0.5,
        contrastive_weight: float = 1.0,
        temperature: float = 0.1,
        projection_dim: int = 32,
        aug_drop_rate: float = 0.1,
        aug_add_rate: float = 0.01,
        aug_max_shift: int = 2,
    ):
        super().__init__(spec)
        s = self.spec
        width = s.n_heldin
        if n_layers < 1 or n_heads < 1:
            raise ValueError(f"n_layers and n_heads must be >= 1; got {n_layers}, {n_heads}")
        attn_dim = n_heads * math.ceil(width / n_heads) if attn_dim is None else attn_dim
        if attn_dim < 1 or attn_dim % n_heads:
            raise ValueError(f"attn_dim={attn_dim} must be a positive multiple of n_heads={n_heads}")
        spatial_dim = s.n_bins if spatial_dim is None else spatial_dim
        ff_dim = 4 * width if ff_dim is None else ff_dim
        for name, size in (
            ("spatial_dim", spatial_dim),
            ("ff_dim", ff_dim),
            ("projection_dim", projection_dim),
        ):
            if size < 1:
                raise ValueError(f"{name} must be >= 1; got {size!r}")
        check_transformer_options(
            dropout=dropout, dropout_embedding=dropout_embedding, dropout_attention=dropout_attention,
            context_forward=context_forward, context_backward=context_backward,
            mask_ratio=mask_ratio, mask_token_ratio=mask_token_ratio, mask_random_ratio=mask_random_ratio,
        )  # fmt: skip
        if not (contrastive_weight >= 0.0 and math.isfinite(contrastive_weight)):
            raise ValueError(
                f"contrastive_weight (lambda) must be finite and >= 0; got {contrastive_weight!r}"
            )
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0; got {temperature!r}")
        for name, p in (("aug_drop_rate", aug_drop_rate), ("aug_add_rate", aug_add_rate)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {p!r}")
        if not 0 <= aug_max_shift < s.n_obs_bins:
            raise ValueError(f"aug_max_shift must be in [0, {s.n_obs_bins - 1}] bins; got {aug_max_shift!r}")

        self.input_scale = math.sqrt(width) if scale_input else 1.0
        self.masking = (mask_ratio, mask_token_ratio, mask_random_ratio)
        self.augmentation = (aug_drop_rate, aug_add_rate, aug_max_shift)
        self.temperature = temperature

        self.pos = nn.Parameter(torch.randn(s.n_bins, width) * 0.02)  # (T, N_in) temporal positions
        self.neuron_pos = nn.Parameter(torch.randn(width, s.n_bins) * 0.02)  # (N_in, T) neuron identities
        self.embed_dropout = nn.Dropout(dropout_embedding)
        self.layers = nn.ModuleList(
            SpatioTemporalLayer(
                s.n_bins, width, attn_dim, n_heads, spatial_dim, ff_dim, dropout, dropout_attention, spatial
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.readout_dropout = nn.Dropout(dropout)
        self.readout = nn.Linear(width, s.n_neurons)
        self.projector = nn.Sequential(
            nn.Linear(width, projection_dim), nn.ReLU(), nn.Linear(projection_dim, projection_dim)
        )
        has_context = context_forward is not None or context_backward is not None
        # (T, T) bool (True = blocked) or None; a buffer so that it follows the model's device.
        self.register_buffer(
            "attn_mask",
            context_mask(s.n_bins, context_forward, context_backward) if has_context else None,
            persistent=False,
        )
        if contrastive_weight > 0:
            self.aux_weights["contrastive"] = Ramp(scale=contrastive_weight)

    def encode(self, heldin: Tensor) -> tuple[Tensor, list[Tensor | None]]:
        """heldin (B, T_obs, N_in) -> hidden states (B, T, N_in) and each layer's spatial attention
        (B, N_in, N_in) (None with spatial=False)."""
        x = F.pad(heldin, (0, 0, 0, self.spec.n_fwd_bins))  # (B, T, N_in): forward bins carry no data
        h = self.embed_dropout(x * self.input_scale + self.pos)  # (B, T, N_in)
        weights = []
        for layer in self.layers:
            h, w = layer(h, self.neuron_pos, self.attn_mask)
            weights.append(w)
        return self.norm(h), weights

    def contrastive_loss(self, heldin: Tensor) -> Tensor:
        """NT-Xent between two augmented views of each trial of heldin (B, T_obs, N_in) -> scalar."""
        views = [augment_spikes(heldin, *self.augmentation) for _ in range(2)]  # 2 x (B, T_obs, N_in)
        z1, z2 = (self.projector(self.encode(v)[0].mean(dim=1)) for v in views)  # (B, projection_dim) each
        return nt_xent(z1, z2, self.temperature)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        heldin = get_heldin(self, batch)  # (B, T_obs, N_in)
        recon_mask, aux = None, {}
        x = heldin
        if self.training:
            x, selected = mask_bins(heldin, *self.masking)
            recon_mask = bin_recon_mask(self.spec, selected)  # (B, T, N)
            if "contrastive" in self.aux_weights:
                aux["contrastive"] = self.contrastive_loss(heldin)
        hidden, _ = self.encode(x)  # (B, T, N_in)
        log_rates = self.readout(self.readout_dropout(hidden))  # (B, T, N)
        return ModelOutput(
            rates=positive_rates(log_rates), latents=hidden, aux_losses=aux, recon_mask=recon_mask
        )
