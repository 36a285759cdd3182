# Sourced by the scripts that build llama.cpp's own tools (bench/gpu/pack.sh, bench/peers/
# llama-cpp-tools.sh): sets
#   sdist    PyPI's llama-cpp-python sdist (fetched once, sha256-checked): it carries the tools'
#            sources that llama-cpp-sys-2 leaves out (llama-bench, batched-bench, lookup,
#            speculative-simple);
#   sysdir   the llama-cpp-sys-2 crate that Cargo.lock pins, whose llama.cpp/ is the source of
#            minervad's own llama.cpp, and sysver its version.
# The caller is at the repository root.
LCP_VERSION=0.3.36
LCP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
cache=${MINERVA_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/minerva/peers}
sdist=$cache/llama_cpp_python-$LCP_VERSION.tar.gz
if [ ! -f "$sdist" ]; then
  mkdir -p "$cache"
  python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$LCP_VERSION" -d "$cache" >&2
fi
echo "$LCP_SHA256  $sdist" | sha256sum -c --quiet
sys=$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = [p for p in m["packages"] if p["name"] == "llama-cpp-sys-2"][0]
print(os.path.dirname(p["manifest_path"]), p["version"])')
sysdir=${sys% *}
sysver=${sys#* }
