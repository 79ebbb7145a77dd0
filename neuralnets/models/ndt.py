"""Neural Data Transformer (Ye & Pandarinath 2021, "Representation learning for neural population activity
with Neural Data Transformers"), built from the paper's description.

Each time bin's held-in population vector is one token. The model sees all T = T_obs + T_fwd positions;
forward positions carry zeros (no data) and are told apart only by their learned positional embedding.
A pre-norm `nn.TransformerEncoder` (optionally with attention limited to a window of past/future bins)
maps tokens to hidden states, and a linear readout gives log-rates of ALL neurons at every bin.

Training is masked modelling (BERT-style, masking whole time bins): in train mode a fraction
`mask_ratio` of each trial's observed bins is selected; of the selected bins a fraction
`mask_token_ratio` is zeroed, a fraction `mask_random_ratio` of the rest gets random spike counts, and
the remaining selected bins are left unchanged. The reconstruction loss is scored (`recon_mask`) on the
held-in neurons at the selected bins, on the held-out neurons at every bin and on all neurons at the
forward bins: those targets are never visible in the input, which is how NDT learns co-smoothing and
forward prediction. In eval mode nothing is masked and `recon_mask` is None.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from neuralnets.data.spikedata import DataSpec
from neuralnets.models.base import ModelOutput, SpikeModel, get_heldin, positive_rates, unseen_mask


def context_mask(n_bins: int, context_forward: int | None, context_backward: int | None) -> Tensor:
    """(T, T) bool attention mask, True = query bin t may NOT attend to key bin s.

    Bin t attends to bins s with t - context_backward <= s <= t + context_forward (None = unlimited).
    Stacked over L layers the receptive field grows to L * context (0 = causal stays causal).
    """
    t = torch.arange(n_bins)
    offset = t[None, :] - t[:, None]  # (T, T): key s - query t
    blocked = torch.zeros(n_bins, n_bins, dtype=torch.bool)
    if context_forward is not None:
        blocked |= offset > context_forward
    if context_backward is not None:
        blocked |= offset < -context_backward
    return blocked


def check_transformer_options(
    *, dropout: float, dropout_embedding: float, dropout_attention: float,
    context_forward: int | None, context_backward: int | None,
    mask_ratio: float, mask_token_ratio: float, mask_random_ratio: float,
) -> None:  # fmt: skip
    """Raise a ValueError naming the option when a dropout, attention context or masking fraction
    of a masked-modelling transformer (NDT, STNDT) is out of range."""
    for name, p in (
        ("dropout", dropout),
        ("dropout_embedding", dropout_embedding),
        ("dropout_attention", dropout_attention),
    ):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1); got {p!r}")
    for name, c in (("context_forward", context_forward), ("context_backward", context_backward)):
        if c is not None and c < 0:
            raise ValueError(f"{name} must be >= 0 or None; got {c!r}")
    if not 0.0 < mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1]; got {mask_ratio!r}")
    for name, p in (("mask_token_ratio", mask_token_ratio), ("mask_random_ratio", mask_random_ratio)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1]; got {p!r}")


def mask_bins(
    heldin: Tensor,
    mask_ratio: float,
    mask_token_ratio: float,
    mask_random_ratio: float,
    return_zeroed: bool = False,
) -> tuple[Tensor, ...]:
    """BERT-style masking of whole bins.

    heldin (B, T_obs, N_in) -> masked input (B, T_obs, N_in), selected bins (B, T_obs) bool, and with
    `return_zeroed` also the zeroed bins (B, T_obs) bool (a subset of the selected ones).
    """
    b, t_obs, _ = heldin.shape
    n_sel = max(1, round(mask_ratio * t_obs))
    # Exactly n_sel random bins per trial: the n_sel smallest of T_obs uniform draws.
    rank = torch.rand(b, t_obs, device=heldin.device).argsort(dim=1).argsort(dim=1)  # (B, T_obs)
    selected = rank < n_sel  # (B, T_obs)
    u = torch.rand(b, t_obs, device=heldin.device)
    zeroed = selected & (u < mask_token_ratio)
    # Of the selected bins not zeroed, a fraction mask_random_ratio is randomised.
    p_rand = (1.0 - mask_token_ratio) * mask_random_ratio
    randomised = selected & (u >= mask_token_ratio) & (u < mask_token_ratio + p_rand)
    # Uniform integers in 0..max count of the batch, computed on the device (no host sync).
    random_counts = torch.floor(torch.rand_like(heldin) * (heldin.amax() + 1.0))  # (B, T_obs, N_in)
    x = torch.where(zeroed[..., None], torch.zeros_like(heldin), heldin)
    x = torch.where(randomised[..., None], random_counts, x)  # (B, T_obs, N_in)
    return (x, selected, zeroed) if return_zeroed else (x, selected)


def bin_recon_mask(spec: DataSpec, selected: Tensor, heldout_masked_only: bool = False) -> Tensor:
    """selected (B, T_obs) bool -> (B, T, N) bool: where the masked-modelling loss is scored.

    Held-in neurons at observed bins are scored where their bin was selected for masking; forward bins
    always. Held-out neurons at observed bins: at every bin, or with `heldout_masked_only` only at the
    selected bins, so that their rates are learnt from the context and not from the bin's own spikes.
    """
    # Held-out neurons and forward bins are never inputs, so they may be scored anywhere.
    mask = unseen_mask(spec, selected.shape[0], selected.device)  # (B, T, N)
    mask[:, : spec.n_obs_bins, : spec.n_heldin] = selected[..., None]
    if heldout_masked_only:
        mask[:, : spec.n_obs_bins, spec.n_heldin :] = selected[..., None]
    return mask


class NDT(SpikeModel):
    """Masked-modelling transformer on binned spikes.

    Args:
        spec: the data spec (or its dict).
        d_model: token width. None (default) follows the paper (d_model = number of input neurons), rounded
            up to a multiple of `n_heads`. The input is always embedded by a learned linear layer
            N_in -> d_model.
        n_layers, n_heads: transformer depth and attention heads.
        ff_dim: feed-forward hidden size; None = 4 * d_model (Vaswani et al. 2017).
        dropout: dropout inside the transformer layers (residual branches, feed-forward) and before the
            readout. dropout_embedding: on the embedded tokens. dropout_attention: on attention weights.
            (NDT relies on heavy dropout; defaults 0.2.)
        context_forward, context_backward: attention window in bins (None = unlimited).
        scale_input: multiply the embedded input by sqrt(d_model) before adding positional embeddings
            (as in Vaswani et al., whose shared embedding table starts at scale 1/sqrt(d_model)). Default
            False: the learned linear embedding of raw counts already has tokens several times larger than
            the positional embedding; scaled (x ~10 at 100 neurons) they swamp it, attention loses time,
            and each bin's held-out rates follow that bin's own noisy spikes (MC_Maze_Small: negative
            co-bps).
        mask_ratio: fraction of each trial's observed bins selected for masked modelling (train mode).
        mask_token_ratio: fraction of the selected bins that are zeroed.
        mask_random_ratio: fraction of the remaining selected bins whose counts are replaced by random
            counts (uniform integers in 0..max count in the batch); the rest stay unchanged.
        mask_token: replace the embedded tokens of the zeroed bins by a learned mask vector (BERT's
            [MASK]) instead of the embedding of zero counts, which a bin without spikes also has: the
            model can then tell a hidden bin from a silent one and learn to ignore it.
        heldout_masked_only: score the held-out neurons' training loss only at the selected (masked)
            observed bins, not at every bin (see `bin_recon_mask`).

    forward(batch) -> ModelOutput with rates (B, T, N) in counts per bin, latents (B, T, d_model) = the
    final (layer-normed) transformer hidden states that the linear readout reads, and in train mode
    recon_mask (B, T, N).
    """

    masks_input = True  # masked modelling: coordinated dropout on top would hide the input twice

    def __init__(
        self,
        spec: DataSpec | dict,
        d_model: int | None = None,
        n_layers: int = 2,
        n_heads: int = 2,
        ff_dim: int | None = None,
        dropout: float = 0.2,
        dropout_embedding: float = 0.2,
        dropout_attention: float = 0.2,
        context_forward: int | None = None,
        context_backward: int | None = None,
        scale_input: bool = False,
        mask_ratio: float = 0.25,
        mask_token_ratio: float = 0.8,
        mask_random_ratio: float = 0.5,
        mask_token: bool = False,
        heldout_masked_only: bool = False,
    ):
        super().__init__(spec)
        s = self.spec
        if n_layers < 1 or n_heads < 1:
            raise ValueError(f"n_layers and n_heads must be >= 1; got {n_layers}, {n_heads}")
        if d_model is None:
            d_model = n_heads * math.ceil(s.n_heldin / n_heads)
        if d_model < 1 or d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a positive multiple of n_heads={n_heads}")
        ff_dim = 4 * d_model if ff_dim is None else ff_dim
        if ff_dim < 1:
            raise ValueError(f"ff_dim must be >= 1; got {ff_dim}")
        check_transformer_options(
            dropout=dropout, dropout_embedding=dropout_embedding, dropout_attention=dropout_attention,
            context_forward=context_forward, context_backward=context_backward,
            mask_ratio=mask_ratio, mask_token_ratio=mask_token_ratio, mask_random_ratio=mask_random_ratio,
        )  # fmt: skip

        self.d_model = d_model
        self.input_scale = math.sqrt(d_model) if scale_input else 1.0
        self.mask_ratio = mask_ratio
        self.mask_token_ratio = mask_token_ratio
        self.mask_random_ratio = mask_random_ratio
        self.heldout_masked_only = heldout_masked_only
        # (d_model,) learned [MASK] token, or None: zeroed bins embed as zero counts
        self.mask_embedding = nn.Parameter(torch.zeros(d_model)) if mask_token else None

        self.embed = nn.Linear(s.n_heldin, d_model)
        self.pos = nn.Parameter(torch.randn(s.n_bins, d_model) * 0.02)  # (T, d_model) learned positions
        self.embed_dropout = nn.Dropout(dropout_embedding)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, ff_dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        layer.self_attn.dropout = dropout_attention  # attention-weight dropout, separate from `dropout`
        self.transformer = nn.TransformerEncoder(
            layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.readout_dropout = nn.Dropout(dropout)
        self.readout = nn.Linear(d_model, s.n_neurons)
        has_context = context_forward is not None or context_backward is not None
        # (T, T) bool or None; a buffer so that it follows the model's device.
        self.register_buffer(
            "attn_mask",
            context_mask(s.n_bins, context_forward, context_backward) if has_context else None,
            persistent=False,
        )

    def mask_bins(self, heldin: Tensor) -> tuple[Tensor, Tensor]:
        """heldin (B, T_obs, N_in) -> masked input (B, T_obs, N_in), selected bins (B, T_obs) bool."""
        x, selected, _ = mask_bins(
            heldin, self.mask_ratio, self.mask_token_ratio, self.mask_random_ratio, return_zeroed=True
        )
        return x, selected

    def recon_mask(self, selected: Tensor) -> Tensor:
        """selected (B, T_obs) bool -> (B, T, N) bool: where the training loss is scored."""
        return bin_recon_mask(self.spec, selected, self.heldout_masked_only)

    def forward(self, batch: dict[str, Tensor]) -> ModelOutput:
        s = self.spec
        heldin = get_heldin(self, batch)  # (B, T_obs, N_in)
        recon_mask = zeroed = None
        if self.training:
            heldin, selected, zeroed = mask_bins(
                heldin, self.mask_ratio, self.mask_token_ratio, self.mask_random_ratio, return_zeroed=True
            )  # (B, T_obs, N_in), (B, T_obs), (B, T_obs)
            recon_mask = self.recon_mask(selected)
        # Forward bins carry no data: pad with zeros to (B, T, N_in).
        x = nn.functional.pad(heldin, (0, 0, 0, s.n_fwd_bins))
        tokens = self.embed(x) * self.input_scale  # (B, T, d_model)
        if zeroed is not None and self.mask_embedding is not None:
            zeroed = nn.functional.pad(zeroed, (0, s.n_fwd_bins))[..., None]  # (B, T, 1)
            tokens = torch.where(zeroed, self.mask_embedding.to(tokens.dtype), tokens)
        tokens = tokens + self.pos  # (B, T, d_model)
        hidden = self.transformer(self.embed_dropout(tokens), mask=self.attn_mask)  # (B, T, d_model)
        log_rates = self.readout(self.readout_dropout(hidden))  # (B, T, N)
        return ModelOutput(rates=positive_rates(log_rates), latents=hidden, recon_mask=recon_mask)
