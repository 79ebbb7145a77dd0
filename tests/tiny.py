"""Hydra overrides shared by the end-to-end tests: an LFADS small enough to train in seconds."""

TINY_LFADS = [
    "model.gen_dim=16",
    "model.fac_dim=4",
    "model.ic_enc_dim=8",
    "model.ci_enc_dim=8",
    "model.con_dim=8",
    "model.co_dim=1",
]
