"""Mask2Former: training on real + synthetic data, evaluation, detectron2 export.
Stage code (train_segmenter, evaluate); never imports the pipeline's plumbing."""
