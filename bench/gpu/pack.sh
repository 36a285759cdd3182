#!/usr/bin/env bash
# Packs, on a CPU machine with cargo, what the GPU machine needs (it has nvcc, CMake and Python
# but no cargo and no network) into .gpu/ (git-ignored), for bench/gpu/run.sh there:
#   minervad.xz, minerva  built here against llama.cpp as shared libraries (feature
#                       minervad/llama-dynamic) for plain x86-64-v3, so they run on any recent
#                       x86-64 host and pick up whichever libllama.so/libggml*.so they find;
#                       with the candle backend on CUDA (minervad/candle-cuda), which loads the
#                       GPU machine's libcuda, cuBLAS and cuRAND;
#   llama.cpp.tar.gz    the exact llama.cpp source that llama-cpp-sys-2 vendors (the source of
#                       minervad's own llama.cpp), to be built there with CUDA, plus the sources
#                       of llama.cpp's llama-bench and llama-batched-bench, which the crate does
#                       not ship: taken from PyPI's llama-cpp-python sdist (its vendored
#                       llama.cpp), checked by sha256, compiled there against that same source;
#   cache/minerva/tokenizers/  Mistral's real tokenizer for `minerva synth` (no network there).
# Usage: bash bench/gpu/pack.sh   (then call the device with carry [".gpu"])
#        PACK_MINERVAD=0 bash bench/gpu/pack.sh   a light pack without minervad (no CUDA build,
#        minutes instead of ~25): enough for run.sh's build, models, peer and verify steps
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
out=$root/.gpu
mkdir -p "$out"

# The llama-bench / batched-bench sources (llama-cpp-python's sdist) and llama-cpp-sys-2's own.
source "$root/bench/peers/llama-cpp-source.sh"

# minervad and minerva, llama.cpp linked dynamically. A separate target dir: the features and
# CPU flags differ from the normal build, which stays as it is. The CLI first, on its own, so
# that it is built without CUDA (it runs here too, and needs no GPU).
export RUSTFLAGS="-C target-cpu=x86-64-v3"
cargo build --release --target-dir target-gpu -p minerva-cli
strip -o "$out/minerva" target-gpu/release/minerva
# minervad with candle on CUDA too: nvcc and headers from PyPI wheels (bench/gpu/cuda-toolkit.sh);
# candle's kernels compiled here for the GPU's compute capability (CUDA_COMPUTE_CAP, 90 for
# H100/H200). They make the binary large: it travels xz-compressed (~12 MB), run.sh unpacks it.
rm -f "$out/minervad" "$out/minervad.xz"
if [ "${PACK_MINERVAD:-1}" != 0 ]; then
  tk=$(bash "$root/bench/gpu/cuda-toolkit.sh")
  CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} NVCC=$tk/bin/nvcc PATH=$tk/bin:$PATH CUDA_HOME=$tk \
    LIBRARY_PATH=$tk/lib:$tk/lib/stubs \
    cargo build --release --target-dir target-gpu -p minervad \
    --features minervad/llama-dynamic,minervad/candle-cuda
  strip -o "$out/minervad.tmp" target-gpu/release/minervad
  xz -T0 -6 -c "$out/minervad.tmp" >"$out/minervad.xz"
  rm "$out/minervad.tmp"
fi

# llama.cpp: the source llama-cpp-sys-2 built above, with the two bench tools added.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r "$sysdir/llama.cpp" "$stage/llama.cpp"
# Other backends and docs are not built there: leave them out of the 64 MiB the call carries.
rm -rf "$stage"/llama.cpp/ggml/src/ggml-{sycl,vulkan,opencl,hexagon,cann,musa,webgpu,zdnn,openvino} \
  "$stage"/llama.cpp/{docs,gguf-py,models,tests,pocs,ci}
tar xzf "$sdist" -C "$stage" \
  "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp/tools/llama-bench" \
  "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp/tools/batched-bench"
rm -rf "$stage/llama.cpp/tools/llama-bench" "$stage/llama.cpp/tools/batched-bench"
mv "$stage/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp/tools/llama-bench" \
  "$stage/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp/tools/batched-bench" "$stage/llama.cpp/tools/"
# Only those two tools: the crate ships the other tools' CMake entries without their sources.
printf '%s\n' 'llama_add_compile_flags()' 'add_subdirectory(llama-bench)' 'add_subdirectory(batched-bench)' \
  > "$stage/llama.cpp/tools/CMakeLists.txt"
printf 'llama.cpp of llama-cpp-sys-2 %s; llama-bench and llama-batched-bench sources from llama-cpp-python %s\n' \
  "$sysver" "$LCP_VERSION" > "$stage/llama.cpp/MINERVA-SOURCE.txt"
tar czf "$out/llama.cpp.tar.gz" -C "$stage" llama.cpp

# The tokenizer `minerva synth --shape mistral-7b-v0.1` needs (fetched from PyPI once here).
tok=${XDG_CACHE_HOME:-$HOME/.cache}/minerva/tokenizers/mistral-tokenizer.model.v1
if [ ! -f "$tok" ]; then
  target-gpu/release/minerva synth --shape tiny --format gguf-f16 -o "$stage/tiny.gguf" --force >/dev/null
fi
mkdir -p "$out/cache/minerva/tokenizers"
cp "$tok" "$out/cache/minerva/tokenizers/"
# libgomp, in case the GPU machine's image lacks it (minervad links llama.cpp's OpenMP).
mkdir -p "$out/lib"
cp "$(gcc -print-file-name=libgomp.so.1)" "$out/lib/"
du -sh "$out"/* >&2
