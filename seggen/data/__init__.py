"""Datasets: the bundled benchmark and its drawn domains, the prior's corpus, real ADE20K and COCO readers.
Stage code (prepare, check_data, prepare_corpus); imports seggen's utilities and stage packages, never the
pipeline's plumbing (stages, tracking, mlflow_models, cli: tests/test_structure.py)."""
