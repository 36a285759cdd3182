#!/usr/bin/env bash
# Runs on the GPU machine, in a copy of the repo holding .gpu/ from bench/gpu/pack.sh:
#   build    llama.cpp (the source minervad was built against) with CUDA, as shared libraries,
#            plus llama-bench and llama-batched-bench linked to those same libraries
#   check    that minervad finds every library it links (llama.cpp's, CUDA's)
#   models   `minerva synth --shape mistral-7b-v0.1` as GGUF Q4_K_M and F16 (ONLY_Q4=1: Q4_K_M)
#   peer     llama-bench (pp512, tg128) on both files and llama-batched-bench (128 in, 128 out;
#            1/8/32/64 sequences; its default KV stream per sequence, and -kvu) on Q4_K_M, all
#            layers on the GPU, flash attention on
#   minerva  minervad (same llama.cpp libraries, all layers on the GPU) and `minerva bench`:
#            pp512, tg128, the four standard scenarios; pp128+tg128 at concurrency 1/8/32/64,
#            with one shared KV pool and with a KV stream per sequence (--kv-per-sequence)
#   candle   the same minervad with the candle backend on CUDA (feature candle-cuda): pp512,
#            tg128, the four standard scenarios on both files; pp128+tg128 at concurrency 1, 8
#   verify   llama-bench passes of 1 to 9 tokens over a 512-token cache on Q4_K_M: what
#            checking k drafted tokens costs against one decode step (the ceiling of
#            speculative decoding's speedup); needs only build and models
#   pack     everything measured into $OUT/gpu-results.tar.gz
# Each step skips what an earlier call on the same (still warm) machine finished, so a step cut
# off by the device's 10-minute limit resumes where it stopped. Work dir: $MINERVA_GPU_WORK.
# Usage: bash bench/gpu/run.sh build check models peer minerva candle pack
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
G=$root/.gpu
W=${MINERVA_GPU_WORK:-/tmp/minerva-gpu}
R=$W/results
B=$W/build/bin
mkdir -p "$W" "$R"
export LD_LIBRARY_PATH=$B${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:$G/lib
# candle's CUDA path loads the CUDA runtime, cuBLAS and cuRAND (CUDA 13): from the toolkit, or the wheels PyTorch
# brought along.
for so in libcudart.so.13 libcublas.so.13 libcurand.so.10; do
  d=$(find /usr/local/cuda*/ /usr/local/lib/python3*/ /opt/ -name "$so" 2>/dev/null | head -1 || true)
  if [ -n "$d" ]; then LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(dirname "$d"); fi
done
export XDG_CACHE_HOME=$G/cache
export MINERVA_HOME=$W/home
# minervad travels xz-compressed (candle's CUDA kernels make it large); a light pack has none.
D=$W/bin/minervad
if [ ! -x "$D" ] && [ -f "$G/minervad.xz" ]; then
  mkdir -p "$W/bin"
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$G/minervad.xz" "$D.tmp"
  chmod +x "$D.tmp" && mv "$D.tmp" "$D"
fi
Q4=$W/mistral-7b-v0.1-q4_k_m.gguf
F16=$W/mistral-7b-v0.1-f16.gguf
# Compute capability of the GPU (9.0 on H100/H200), for nvcc.
ARCH=${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}
RUNS=${RUNS:-5}

log() { echo "[$(date +%T)] $*" >&2; }

step_build() {
  if [ -x "$B/llama-bench" ] && [ -x "$B/llama-batched-bench" ]; then return; fi
  if [ ! -d "$W/src" ]; then
    rm -rf "$W/src.tmp" && mkdir -p "$W/src.tmp"
    tar xzf "$G/llama.cpp.tar.gz" -C "$W/src.tmp" && mv "$W/src.tmp/llama.cpp" "$W/src"
  fi
  if [ ! -f "$W/build/build.ninja" ]; then
    log "configure (CUDA arch $ARCH)"
    cmake -S "$W/src" -B "$W/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$ARCH" \
      -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >"$R/cmake.log"
  fi
  log "build"
  cmake --build "$W/build" -j "$(nproc)" --target llama-bench llama-batched-bench >"$R/build.log"
  log "built: $(ls "$B" | tr '\n' ' ')"
}

step_check() {
  # Every library minervad loads is found (llama.cpp's from build, CUDA's from the machine).
  if ldd "$D" | grep "not found"; then log "minervad misses the libraries above"; return 1; fi
  "$D" --version
}

step_models() {
  for pair in "gguf-q4_k_m $Q4" "gguf-f16 $F16"; do
    set -- $pair
    # ONLY_Q4=1: the quantized file alone (enough for verify).
    [ "${ONLY_Q4:-0}" = 1 ] && [ "$1" != gguf-q4_k_m ] && continue
    [ -f "$2.done" ] && continue
    log "synth $1"
    "$G/minerva" synth --shape mistral-7b-v0.1 --format "$1" -o "$2" --force | tee -a "$R/synth.txt"
    touch "$2.done"
  done
}

step_peer() {
  if [ ! -s "$R/peer-llama-bench.json" ]; then
    log "llama-bench"
    "$B/llama-bench" -m "$Q4" -m "$F16" -p 512 -n 128 -ngl 99 -fa 1 -r "$RUNS" -o json \
      >"$R/peer-llama-bench.json.tmp" 2>"$R/peer-llama-bench.log"
    mv "$R/peer-llama-bench.json.tmp" "$R/peer-llama-bench.json"
  fi
  if [ ! -s "$R/peer-batched-bench.jsonl" ]; then
    log "llama-batched-bench"
    "$B/llama-batched-bench" -m "$Q4" -c 16384 -b 2048 -ub 512 -npp 128 -ntg 128 \
      -npl 1,8,32,64 -ngl 99 -fa on --output-format jsonl \
      >"$R/peer-batched-bench.jsonl.tmp" 2>"$R/peer-batched-bench.log"
    mv "$R/peer-batched-bench.jsonl.tmp" "$R/peer-batched-bench.jsonl"
  fi
  # The same with one KV pool shared by all sequences (-kvu), Minerva's default layout.
  if [ ! -s "$R/peer-batched-bench-kvu.jsonl" ]; then
    log "llama-batched-bench -kvu"
    "$B/llama-batched-bench" -m "$Q4" -c 16384 -b 2048 -ub 512 -npp 128 -ntg 128 \
      -npl 1,8,32,64 -ngl 99 -fa on -kvu --output-format jsonl \
      >"$R/peer-batched-bench-kvu.jsonl.tmp" 2>"$R/peer-batched-bench-kvu.log"
    mv "$R/peer-batched-bench-kvu.jsonl.tmp" "$R/peer-batched-bench-kvu.jsonl"
  fi
}

step_verify() {
  if [ ! -s "$R/verify-cost.json" ]; then
    log "llama-bench: passes of 1..9 tokens at depth 512"
    "$B/llama-bench" -m "$Q4" -p 1,2,3,4,5,6,7,8,9 -n 0 -d 512 -ngl 99 -fa 1 \
      -r "$RUNS" -o json >"$R/verify-cost.json.tmp" 2>"$R/verify-cost.log"
    mv "$R/verify-cost.json.tmp" "$R/verify-cost.json"
  fi
}

daemon=
start_daemon() {
  # Debug level for the worker: it logs where its step time goes (forward vs sampling).
  RUST_LOG=info,minervad::engine::worker=debug \
    "$D" --keep-alive forever --max-queue 256 "$@" >>"$R/minervad.log" 2>&1 &
  daemon=$!
  for _ in $(seq 100); do "$G/minerva" status >/dev/null 2>&1 && return; sleep 0.2; done
  log "minervad did not start"; tail "$R/minervad.log" >&2; return 1
}
stop_daemon() {
  kill "$daemon" && wait "$daemon" || log "minervad exited with $?"
}

# pp128+tg128 with N clients at once, N = 1, 8, 32, 64, into $R/minerva-$1-cN.json.
concurrency() {
  for c in 1 8 32 64; do
    [ -s "$R/minerva-$1-c$c.json" ] && continue
    log "minerva bench ($1 KV): pp128+tg128 at concurrency $c"
    "$G/minerva" bench "$Q4" --tests pp128+tg128 --concurrency "$c" --runs 3 \
      -o "$R/minerva-$1-c$c.json.tmp" | tee "$R/minerva-$1-c$c.txt"
    mv "$R/minerva-$1-c$c.json.tmp" "$R/minerva-$1-c$c.json"
  done
}

step_minerva() {
  # All layers on the GPU (the default when llama.cpp sees one). First one shared KV pool of
  # 16384 cells for 64 sequences (the daemon's default layout): single-stream tests on both
  # files, then concurrency.
  start_daemon --parallel 64 --ctx 16384
  if [ ! -s "$R/minerva-single.json" ]; then
    log "minerva bench: pp512, tg128, standard"
    "$G/minerva" bench "$Q4" "$F16" --tests pp512,tg128,standard --runs "$RUNS" \
      -o "$R/minerva-single.json.tmp" | tee "$R/minerva-single.txt"
    mv "$R/minerva-single.json.tmp" "$R/minerva-single.json"
  fi
  concurrency shared
  stop_daemon
  # Then a KV stream per sequence (--kv-per-sequence), as llama-batched-bench runs by default.
  start_daemon --parallel 64 --ctx 1024 --kv-per-sequence
  concurrency per-sequence
  stop_daemon
}

step_candle() {
  # gpu_layers > 0 (the default with a GPU) puts a candle model wholly on the GPU.
  start_daemon --parallel 8 --ctx 4096
  if [ ! -s "$R/candle-single.json" ]; then
    log "minerva bench --backend candle: pp512, tg128, standard"
    "$G/minerva" bench "$Q4" "$F16" --backend candle --tests pp512,tg128,standard --runs 3 \
      -o "$R/candle-single.json.tmp" | tee "$R/candle-single.txt"
    mv "$R/candle-single.json.tmp" "$R/candle-single.json"
  fi
  # Does the GPU path compute what the CPU path and llama.cpp do? Perplexity of the same text
  # (bench/perplexity.txt: the first 6,000 bytes of an earlier README, ~1,500 tokens, 3 chunks
  # of 512) on the same files: candle on the GPU, candle on the CPU (Q4_K_M only: the CPU is
  # slow at 7B) and llama.cpp on the GPU.
  if [ ! -s "$R/candle-perplexity.txt" ]; then
    cp "$root/bench/perplexity.txt" "$W/ppl.txt"
    for run in "$Q4 candle 99" "$Q4 candle 0" "$Q4 llama.cpp 99" "$F16 candle 99" "$F16 llama.cpp 99"; do
      set -- $run
      log "perplexity: $(basename "$1") $2 gpu_layers $3"
      echo "$(basename "$1") $2 gpu_layers=$3: $("$G/minerva" bench perplexity "$1" "$W/ppl.txt" \
        --chunk 512 --backend "$2" --gpu-layers "$3" 2>&1 | tail -1)" | tee -a "$R/candle-perplexity.txt.tmp"
    done
    mv "$R/candle-perplexity.txt.tmp" "$R/candle-perplexity.txt"
  fi
  for c in 1 8; do
    [ -s "$R/candle-c$c.json" ] && continue
    log "minerva bench --backend candle: pp128+tg128 at concurrency $c"
    "$G/minerva" bench "$Q4" --backend candle --tests pp128+tg128 --concurrency "$c" --runs 3 \
      -o "$R/candle-c$c.json.tmp" | tee "$R/candle-c$c.txt"
    mv "$R/candle-c$c.json.tmp" "$R/candle-c$c.json"
  done
  stop_daemon
}

step_pack() {
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
    nvcc --version | tail -2
    lscpu | grep -E "Model name|^CPU\(s\)"
    cat "$W/src/MINERVA-SOURCE.txt"
  } >"$R/machine.txt" 2>&1 || true
  tar czf "$OUT/gpu-results.tar.gz" -C "$W" results
}

for step in "$@"; do
  "step_$step"
done
