# Two entry points for a new user: `make run` (main job on the embedded default) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser run lint test test-slow test-all gpu-check gpu-wheels bench bench-generators bench-synthesis bench-segmenter bench-training bench-merge bench-pipeline bench-ablation ci-check clean-data plots-template exps

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c requirements.lock -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

# The main job: the DVC pipeline on the embedded default (bundled benchmark). Re-running is a no-op.
run: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

# ruff: lint, import order and formatting (pyproject.toml [tool.ruff])
lint: install
	$(VENV)/bin/ruff check seggen flows benchmarks tests
	$(VENV)/bin/ruff format --check seggen flows benchmarks tests

# The suites run on PYTEST_WORKERS processes (pytest-xdist; 0: one process), each with one compute
# thread (tests/conftest.py). test: the fast suite (~7 min on 2 cores); test-slow: the end-to-end
# pipelines (dvc repro, Prefect and MLflow with their UIs in a real browser, the ablation, the CI gate),
# a test file per worker (its project fixture is built once).
PYTEST_WORKERS ?= 2

test: install browser
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-slow: install browser
	$(PY) -m pytest -m slow -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-all: install browser
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The browser tests drive Debian's chromium (playwright's own browser downloads are not used): installed
# with apt where it is missing and we may (root), else the tests that need it say so.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; }; } || \
		echo "note: no chromium (apt-get install chromium): the browser test will fail"

# The real-size path on one GPU: SD-1.5 / SDXL generators, ControlNet and Mask2Former at their published
# sizes (random weights), run through the stages; figures to gpu-check/ (docs/benchmarks.md, about 6 min on
# an H200). With .venv it runs there; on a GPU machine without .venv or a registry, from the wheels that
# `make gpu-wheels` downloads into .whl/ (carry that folder there).
GPU_ARGS ?=
gpu-check:
	@if [ -x $(PY) ]; then SEGGEN_TRACKING=off $(PY) -m benchmarks.gpu_check $(GPU_ARGS); \
	else sh benchmarks/gpu_check.sh $(GPU_ARGS); fi

# What a GPU machine with python3, torch, transformers and accelerate lacks for the check, at the
# versions of requirements.lock: CPython 3.12 x86-64 wheels, about 23 MB.
GPU_WHEELS := diffusers pydantic pydantic_core annotated-types typing-inspection typing_extensions ruamel.yaml \
	pycocotools importlib_metadata transformers regex
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
gpu-wheels:
	@set -e; pins=""; for n in $(GPU_WHEELS); do \
		pin=$$(grep -i "^$$n==" requirements.lock) || { echo "error: $$n is not in requirements.lock" >&2; exit 2; }; \
		pins="$$pins $$pin"; done; \
	rm -rf .whl && mkdir -p .whl; \
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(addprefix --platform ,$(GPU_PLATFORMS)) -d .whl $$pins
	@du -sh .whl

bench: install
	$(PY) -m benchmarks.run

# Trains both generators through DVC if needed (~11 min on 2 cores), then measures their quality.
bench-generators: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro train_text2mask train_mask2img
	$(PY) -m benchmarks.bench_generators

# Our batched MaskSyn/ImgSyn vs a per-image loop of diffusers' stock pipelines (~5 min on 2 cores).
bench-synthesis: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro train_text2mask train_mask2img
	$(PY) -m benchmarks.bench_synthesis

# Default Mask2Former, semantic and panoptic, vs trivial baselines (~12 min on 2 cores).
bench-segmenter: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro prepare
	$(PY) -m benchmarks.bench_segmenter --panoptic

# Steps/s of every training stage on the default config, peak host RSS at 1 k and 8 k images (after
# `make run`; ~25 min on 2 cores).
bench-training: install
	$(PY) -m benchmarks.bench_training

# Merging a 1 M-sample ImgSyn dataset from its batches' records (synthetic records; ~5 min on 2 cores).
bench-merge: install
	$(PY) -m benchmarks.bench_merge

# The whole default pipeline from fresh clones: dvc repro, no-op, and the Prefect flow (two runs of ~40 min
# each on 2 cores, docs/benchmarks.md#pipeline).
bench-pipeline: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m benchmarks.bench_pipeline

# The ablation: ablation/dvc.yaml with ablation/params.yaml -> docs/results.md (from MLflow).
bench-ablation: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro ablation/dvc.yaml

# `dvc exp show` cut to what fits a terminal: the report's headline (`headline.*` of reports/summary.json)
# and the params an experiment changed; code, data and per-arm columns dropped. EXPS_ARGS adds options
# (e.g. "--sort-by headline.unseen_mean --hide-workspace").
EXPS_DROP := Created$$|(models|data|reports|seggen)/|ablation/|arms\.[^.]+\.(tuning|validation)|delta_mIoU|domains\.|headline\.arm$$
EXPS_KEEP := Experiment$$|headline\.(in_domain|unseen_mean|unseen_worst_domain|domains_worse_by_2)$$
exps: install
	$(VENV)/bin/dvc exp show --only-changed --drop '$(EXPS_DROP)' --keep '$(EXPS_KEEP)' $(EXPS_ARGS)

# The CI mIoU gate (docs/pipeline.md#ci-gate); `make ci-check CI_ARGS=--update` rewrites the baseline.
ci-check: install
	$(VENV)/bin/seggen ci-check $(CI_ARGS)

# seggen's generated data: only folders that carry its marker (.seggen), never a dataset of yours
clean-data:
	@for d in data/benchmark data/synthetic/masksyn data/synthetic/imgsyn data/corpus; do \
		if [ -f "$$d/.seggen" ]; then rm -rf "$$d" && echo "removed $$d"; elif [ -e "$$d" ]; then echo "kept $$d (no .seggen: not seggen's)"; fi; done
	rm -f data/check.txt

# .dvc/plots.html: the page of `dvc plots show/diff` with vega inlined, so the charts render offline
# (dvc-render's pinned versions; needs npm and its registry).
VEGA := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
plots-template:
	@d=$$(mktemp -d) && cd $$d && npm pack -q $(VEGA) >/dev/null && for f in *.tgz; do tar xzf $$f && cp package/build/$${f%-*.tgz}.min.js . && rm -rf package; done && \
	  cd $(CURDIR) && $(PYTHON) -c 'import sys; from pathlib import Path; p = Path(".dvc/plots.html"); t = p.read_text(); \
	  js = "\n".join("<script type=\"text/javascript\">\n" + Path(sys.argv[1], n + ".min.js").read_text() + "\n</script>" for n in ("vega", "vega-lite", "vega-embed")); \
	  p.write_text(t[: t.index("<script")] + js + t[t.rindex("</script>") + 9 :])' $$d && rm -rf $$d
