"""MaskSyn and ImgSyn: batched, sharded, resumable synthesis with its quality filters and Dask runner.
Stage code (synthesize); never imports the pipeline's plumbing."""
