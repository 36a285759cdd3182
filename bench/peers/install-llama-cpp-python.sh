#!/usr/bin/env bash
# Installs the peer: llama.cpp itself, as PyPI's llama-cpp-python builds it from its vendored
# source with llama.cpp's defaults (GGML_NATIVE, OpenMP), as Minerva builds its own copy.
# Cached in a venv keyed by the flags; prints the venv's python. PEER_CMAKE_ARGS overrides.
set -euo pipefail
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${MINERVA_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/minerva/peers}
# llama.cpp's own defaults: GGML_NATIVE (as Minerva's build, .cargo/config.toml) and OpenMP.
flags=(-DGGML_NATIVE=ON -DGGML_OPENMP=ON)
CMAKE_FLAGS=${PEER_CMAKE_ARGS:-${flags[*]}}
# The same C++ flags Minerva's own llama.cpp gets (.cargo/config.toml): with GCC 12 at -O3,
# llama.cpp's AMX tile config is dropped by dead-store elimination and the AMX matmul faults on
# AMX CPUs. Both sides build with it, so neither is handicapped. PEER_CXXFLAGS overrides.
PEER_CXXFLAGS=${PEER_CXXFLAGS--fno-dse -fno-tree-dse}
TAG=$(echo "$CMAKE_FLAGS|$PEER_CXXFLAGS" | sha256sum | cut -c1-8)
VENV="$CACHE/llama-cpp-python-$VERSION-$TAG"
if ! "$VENV/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
  echo "peer: building llama-cpp-python==$VERSION from source into $VENV (several minutes)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  echo "peer: CMAKE_ARGS=$CMAKE_FLAGS" >&2
  echo "peer: CXXFLAGS=$PEER_CXXFLAGS" >&2
  CMAKE_ARGS="$CMAKE_FLAGS" CXXFLAGS="$PEER_CXXFLAGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$VENV/bin/pip" install --no-cache-dir "llama-cpp-python==$VERSION" >&2
  # Read back by llama_cpp_bench.py into the result's build field.
  echo "llama-cpp-python $VERSION; CMake Release; CMAKE_ARGS=$CMAKE_FLAGS; CXXFLAGS=$PEER_CXXFLAGS" \
    >"$VENV/minerva-build.txt"
fi
echo "$VENV/bin/python"
