#!/bin/sh
# `make gpu-check` on a GPU machine that has python3 with a CUDA torch, transformers and accelerate but no
# .venv and no package registry: installs the wheels that `make gpu-wheels` put in .whl/ (carried there)
# into .whl/site, then runs the check with tracking off, under a time limit (GPU_CHECK_TIMEOUT seconds).
set -e
py=${GPU_PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    rm -rf .whl/site
    "$py" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target .whl/site .whl/*.whl
    export PYTHONPATH="$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
    # transformers checks its own dependencies' versions at import: where the machine's are older than
    # the locked transformers needs, keep the machine's transformers (it says which one it uses)
    if ! "$py" -c "import transformers" >/dev/null 2>&1; then
        echo "note: the carried transformers does not import with this machine's packages; using the machine's"
        rm -rf .whl/site/transformers .whl/site/transformers-*
    fi
fi
export SEGGEN_TRACKING=off
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$py" -m benchmarks.gpu_check "$@"
