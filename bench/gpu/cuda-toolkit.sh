#!/usr/bin/env bash
# Assembles, on a CPU machine with no CUDA toolkit, what building the candle backend with CUDA
# (minervad feature candle-cuda) needs: NVIDIA's nvcc 13.0 and CUDA headers from PyPI wheels
# (checked by sha256, cached), plus link stubs for the driver and the libraries the binary loads
# at run time (libcuda.so.1, libcublas.so.13, libcublasLt.so.13, libcurand.so.10): the GPU
# machine has the real ones (its driver and CUDA 13.0 toolkit), as NVIDIA's own lib64/stubs
# serve for linking on build machines. candle's kernels are compiled here by that nvcc (PTX and
# a static library of sm_$CUDA_COMPUTE_CAP code) into the binary.
# Prints the toolkit's folder. Usage: tk=$(bash bench/gpu/cuda-toolkit.sh)
set -euo pipefail
cache=${XDG_CACHE_HOME:-$HOME/.cache}/minerva
wheels=$cache/cuda-wheels
tk=$cache/cuda-13.0
if [ -x "$tk/bin/nvcc" ] && [ -f "$tk/lib/stubs/libcuda.so" ]; then
  echo "$tk"
  exit 0
fi
mkdir -p "$wheels"
# name==version sha256 (the GPU machine runs CUDA 13.0: its driver JIT-compiles 13.0's PTX)
while read -r spec sha; do
  name=${spec%%==*}
  ver=${spec#*==}
  file=$(ls "$wheels"/"${name//-/_}"-"$ver"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$file" ]; then
    python3 -m pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --python-version 3.11 "$spec" -d "$wheels" >&2
    file=$(ls "$wheels"/"${name//-/_}"-"$ver"-*.whl | head -1)
  fi
  echo "$sha  $file" | sha256sum -c --quiet >&2
done <<'EOF'
nvidia-cuda-nvcc==13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-cuda-crt==13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-nvvm==13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-nvrtc==13.0.88 ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
EOF

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for w in "$wheels"/nvidia_cuda_nvcc-13.0.88-* "$wheels"/nvidia_cuda_crt-13.0.88-* \
  "$wheels"/nvidia_nvvm-13.0.88-* "$wheels"/nvidia_cuda_runtime-13.0.96-* \
  "$wheels"/nvidia_cuda_cccl-13.0.85-* "$wheels"/nvidia_cuda_nvrtc-13.0.88-*; do
  python3 -m zipfile -e "$w" "$stage/x"
done
rm -rf "$tk"
mv "$stage/x/nvidia/cu13" "$tk"
chmod +x "$tk"/bin/* "$tk"/nvvm/bin/* 2>/dev/null || true
ln -sf libcudart.so.13 "$tk/lib/libcudart.so"
ln -sf libnvrtc.so.13 "$tk/lib/libnvrtc.so"

# Link stubs: every function cudarc (the crate candle calls CUDA through) binds, in a library of
# the real one's soname. Nothing here runs them.
cudarc=$(cargo metadata --format-version 1 --locked --features minervad/candle-cuda 2>/dev/null \
  | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
print([os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "cudarc"][0])')
mkdir -p "$tk/lib/stubs"
while read -r module lib soname; do
  grep -ohP '^pub unsafe fn \K\w+' "$cudarc/src/$module/sys/mod.rs" | sort -u \
    | sed 's/.*/void &(void) {}/' > "$stage/$lib.c"
  cc -shared -fPIC -Wl,-soname,"$soname" -o "$tk/lib/stubs/$lib.so" "$stage/$lib.c"
done <<'EOF'
driver libcuda libcuda.so.1
cublas libcublas libcublas.so.13
cublaslt libcublasLt libcublasLt.so.13
curand libcurand libcurand.so.10
EOF
"$tk/bin/nvcc" --version | tail -1 >&2
echo "$tk"
