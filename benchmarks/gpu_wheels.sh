#!/usr/bin/env bash
# Wheels of the dependencies a stock CUDA PyTorch image lacks (fvcore, iopath, yacs, termcolor,
# pycocotools, shapely), fetched here for a GPU machine that cannot reach PyPI:
#
#   bash benchmarks/gpu_wheels.sh [DIR] [PYTHON_VERSION]     # default: .whl 3.12
#   # there: pip install --no-index --no-deps --target /tmp/site DIR/*.whl
#   #        export PYTHONPATH=/tmp/site:$PYTHONPATH
#
# fvcore and iopath publish source archives only; both are pure Python, so the wheels built
# from them here install on any machine.
set -eu
dir=${1:-.whl}
py=${2:-3.12}
mkdir -p "$dir"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
    --implementation cp "${platforms[@]}" -d "$dir" \
    yacs==0.1.8 termcolor==3.3.0 pycocotools==2.0.11 shapely==2.2.0
python -m pip wheel -q --no-deps --no-binary=fvcore,iopath -w "$dir" \
    fvcore==0.1.5.post20221221 iopath==0.1.10
ls "$dir"
