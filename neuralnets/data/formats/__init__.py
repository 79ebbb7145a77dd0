"""One module per file format: `npz`, `lfads_h5`, `nlb_h5`, `nwb`, `nlb_nwb`, `nlb_targets` (readers, and
writers where they exist); `common` holds their shared checks."""
