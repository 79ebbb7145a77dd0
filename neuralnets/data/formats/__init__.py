"""One module per file format: `npz`, `lfads_h5`, `nlb_h5`, `nwb` (readers, and writers where they exist)."""
