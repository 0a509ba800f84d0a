"""Datasets: the bundled benchmark and its drawn domains, the prior's corpus, real ADE20K and COCO readers,
preparing a dataset (prepare.py) and captioning it (captions.py).
Stage code (prepare, check_data, caption, prepare_corpus); imports seggen's utilities and stage packages,
never the pipeline's plumbing (seggen.pipeline, seggen.cli: tests/test_structure.py)."""
