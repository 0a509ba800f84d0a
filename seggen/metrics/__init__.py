"""Reference-exact metrics: mmsegmentation's mIoU, the COCO panoptic API's PQ, COCOeval's mask AP.
Reads files and arrays only; never imports the pipeline's plumbing."""
