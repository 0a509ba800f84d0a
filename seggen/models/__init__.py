"""What several stages build on: resumable training checkpoints, the text encoder, the filter probe.
Never imports the pipeline's plumbing."""
