#!/usr/bin/env bash
# Builds the peer environment: the real detectron2 and AdelaiDet (the unmodified snapshots in
# shared/vendor) with condinst-percep, in a virtual environment outside the clone, for the
# integration and parity tests (tests/d2). Cached: a second run with the same snapshots and
# versions only re-installs condinst-percep (seconds).
#
#   bash tools/peer_env.sh            # build (or reuse) it; the last line printed is its python
#   bash tools/peer_env.sh --python   # print its python if built, exit 1 otherwise
#
# Environment: CONDINST_PERCEP_SHARED (default: ../shared beside the clone) holds vendor/;
# CONDINST_PERCEP_PEER_ENV (default ~/.cache/condinst_percep/peer_env) is where it is built.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${CONDINST_PERCEP_SHARED:-$repo/../shared}
vendor=$shared/vendor
root=${CONDINST_PERCEP_PEER_ENV:-$HOME/.cache/condinst_percep/peer_env}

# torchvision's wheels are CUDA builds: they need the CUDA build of torch, which runs without a GPU.
torch_pin="torch==2.14.1 torchvision==0.29.1"
# detectron2's and AdelaiDet's install_requires (both are built in place, not pip-installed),
# with detectron2's own pins on fvcore and iopath.
deps="Pillow matplotlib pycocotools termcolor yacs tabulate cloudpickle tqdm tensorboard
  fvcore>=0.1.5,<0.1.6 iopath>=0.1.7,<0.1.10 omegaconf>=2.1,<2.4 hydra-core>=1.1 black packaging
  scikit-image shapely rapidfuzz editdistance opencv-python-headless pytest"
d2_tar=$vendor/detectron2-02b5c4e2.tar.gz
adet_tar=$vendor/AdelaiDet-3672122.tar.gz

for tar in "$d2_tar" "$adet_tar"; do
  if [ ! -f "$tar" ]; then
    echo "peer_env: $tar is missing (set CONDINST_PERCEP_SHARED to the folder holding vendor/)" >&2
    exit 2
  fi
done
# The key covers what goes into the build: both snapshots, the pins and this script's recipe.
key=$( (sha256sum "$d2_tar" "$adet_tar" | cut -d' ' -f1; echo "$torch_pin $deps"; \
        sed -n '/^# recipe:/,$p' "$0") | sha256sum | cut -c1-12)
env=$root/$key
py=$env/venv/bin/python

if [ "${1:-}" = "--python" ]; then
  [ -f "$env/complete" ] && { echo "$py"; exit 0; }
  echo "peer_env: not built yet (run bash tools/peer_env.sh)" >&2
  exit 1
fi

# recipe: everything below decides what the environment holds.
if [ ! -f "$env/complete" ]; then
  echo "peer_env: building $env (cold: torch download and detectron2's C++ ops, ~10-20 min)" >&2
  rm -rf "$env"
  mkdir -p "$env/src"
  python3 -m venv "$env/venv"
  "$py" -m pip install --quiet --upgrade pip setuptools wheel
  # shellcheck disable=SC2086
  "$py" -m pip install --quiet $torch_pin
  # shellcheck disable=SC2086
  "$py" -m pip install --quiet $deps
  tar -xzf "$d2_tar" -C "$env/src"
  tar -xzf "$adet_tar" -C "$env/src"
  # detectron2's CPU ops compile in place against this torch (pip install -e of it fails).
  (cd "$env/src/detectron2" && MAX_JOBS=2 "$py" setup.py build_ext --inplace > "$env/d2_build.log" 2>&1) \
    || { echo "peer_env: detectron2 build failed, see $env/d2_build.log" >&2; exit 1; }
  # AdelaiDet's compiled ops (BezierAlign, DefROIAlign) do not compile against current torch and
  # CondInst/BoxInst never call them, but `import adet` imports the module that holds them: a
  # stand-in module raises with the reason if anything reaches for one.
  cat > "$env/src/AdelaiDet/adet/_C.py" <<'EOF'
def __getattr__(name):
    raise ImportError(
        f"adet._C.{name}: AdelaiDet's compiled ops are not built in the condinst-percep peer "
        "environment (they do not compile against current torch; CondInst and BoxInst do not use them)"
    )
EOF
  site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  printf '%s\n%s\n' "$env/src/detectron2" "$env/src/AdelaiDet" > "$site/condinst_percep_peers.pth"
  "$py" -c 'import detectron2, detectron2._C, adet.modeling.condinst; print("detectron2", detectron2.__version__)' >&2
  touch "$env/complete"
fi
# condinst-percep itself, from this clone, every time (the clone moves; its deps are already in).
"$py" -m pip install --quiet --no-deps --no-build-isolation -e "$repo" >&2
echo "$py"
