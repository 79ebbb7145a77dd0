"""Building blocks: clipped GRU, likelihoods, priors, augmentations, readouts."""

from neuralnets.nn.augmentations import (
    coordinated_dropout,
    expand_heldin_mask,
    masked_mean,
    masked_trial_sum,
    sbtt_mask,
)
from neuralnets.nn.clipped_gru import BidirectionalGRU, ClippedGRU, ClippedGRUCell
from neuralnets.nn.likelihoods import (
    LIKELIHOODS,
    GammaLikelihood,
    GaussianLikelihood,
    Likelihood,
    NegativeBinomialLikelihood,
    PoissonLikelihood,
    ZeroInflatedGamma,
    make_likelihood,
)
from neuralnets.nn.priors import AutoregressivePrior, MultivariateNormalPrior
from neuralnets.nn.readout import LogRateReadout, NormalizedLinear

__all__ = [
    "LIKELIHOODS",
    "AutoregressivePrior",
    "BidirectionalGRU",
    "ClippedGRU",
    "ClippedGRUCell",
    "GammaLikelihood",
    "GaussianLikelihood",
    "Likelihood",
    "LogRateReadout",
    "MultivariateNormalPrior",
    "NegativeBinomialLikelihood",
    "NormalizedLinear",
    "PoissonLikelihood",
    "ZeroInflatedGamma",
    "coordinated_dropout",
    "expand_heldin_mask",
    "make_likelihood",
    "masked_mean",
    "masked_trial_sum",
    "sbtt_mask",
]
