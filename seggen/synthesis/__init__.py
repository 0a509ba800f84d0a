"""MaskSyn and ImgSyn: batched, sharded, resumable synthesis with its quality filters, the filters' probe
segmenter (probe.py) and the Dask runner.
Stage code (synthesize); never imports the pipeline's plumbing."""
