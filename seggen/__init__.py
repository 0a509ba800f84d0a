"""seggen: SegGen (Text2Mask + Mask2Img synthesis) for segmentation training, as a reproducible pipeline."""

__version__ = "0.1.0"
