"""Text2Mask, Mask2Img and the prior: pixel- or latent-space diffusion, the text encoder and its tokenizer
(text.py), training and diffusers pipelines.
Stage code (train_text2mask, train_prior, train_mask2img); never imports the pipeline's plumbing."""
