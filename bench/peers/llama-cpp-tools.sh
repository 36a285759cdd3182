#!/usr/bin/env bash
# Builds llama.cpp's own speculative-decoding tools for this CPU, once, from the llama.cpp source
# that llama-cpp-sys-2 vendors (the source of minervad's own llama.cpp backend), with the tools'
# sources that the crate leaves out taken from PyPI's llama-cpp-python sdist:
#   llama-lookup              prompt lookup (n-gram drafts from the prompt and the output)
#   llama-speculative-simple  a draft model
# Prints the folder that holds them. Needs cmake and a C++ compiler (scripts/setup.sh).
# Usage: bin=$(bash bench/peers/llama-cpp-tools.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
source "$root/bench/peers/llama-cpp-source.sh"
out=$root/target/llama-cpp-tools-$sysver-lcp$LCP_VERSION
if [ -x "$out/bin/llama-lookup" ] && [ -x "$out/bin/llama-speculative-simple" ]; then
  echo "$out/bin"
  exit 0
fi
rm -rf "$out.partial"
mkdir -p "$out.partial"
src=$out.partial/llama.cpp
cp -r "$sysdir/llama.cpp" "$src"
tar xzf "$sdist" -C "$out.partial" \
  "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp/examples/lookup" \
  "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp/examples/speculative-simple"
for t in lookup speculative-simple; do
  rm -rf "$src/examples/$t"
  mv "$out.partial/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp/examples/$t" "$src/examples/"
done
# Only those two: the crate ships the other examples' and tools' CMake entries without sources.
printf '%s\n' 'add_subdirectory(lookup)' 'add_subdirectory(speculative-simple)' \
  >"$src/examples/CMakeLists.txt"
printf '' >"$src/pocs/CMakeLists.txt"
# The CPU build minervad's llama.cpp gets (.cargo/config.toml): Release, native instructions,
# OpenMP, and GCC's dead-store elimination off (it breaks llama.cpp's AMX tile config).
CXXFLAGS="-fno-dse -fno-tree-dse" \
  cmake -S "$src" -B "$out.partial/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >&2
cmake --build "$out.partial/build" -j "$(nproc)" --target llama-lookup llama-speculative-simple >&2
mkdir -p "$out.partial/bin"
cp "$out.partial/build/bin/llama-lookup" "$out.partial/build/bin/llama-speculative-simple" \
  "$out.partial/bin/"
printf 'llama.cpp of llama-cpp-sys-2 %s; lookup and speculative-simple from llama-cpp-python %s\n' \
  "$sysver" "$LCP_VERSION" >"$out.partial/bin/SOURCE.txt"
rm -rf "$out.partial/build" "$src" "$out.partial/llama_cpp_python-$LCP_VERSION"
rm -rf "$out"
mv "$out.partial" "$out"
echo "$out/bin"
