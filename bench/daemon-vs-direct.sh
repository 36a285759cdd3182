#!/usr/bin/env bash
# What does the daemon add over llama-cpp-2 called directly? Same model file, chat prompt,
# threads, greedy decoding and token count; the daemon warm (the model stays loaded), the
# direct run loading fresh each round (its load time is reported apart and not compared).
# Rounds alternate so drift on the machine hits both sides alike. Run on a quiet machine.
#
#   bench/daemon-vs-direct.sh [ROUNDS=5] [TOKENS=128] [THREADS=2]   (MINERVAD_ARGS adds daemon flags)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
TOKENS=${2:-128}
THREADS=${3:-2}
PROMPT="Explain quantum computing in simple terms."

cargo build --release --workspace --bins --examples >&2
BIN=target/release
HOME_DIR=$(mktemp -d)
trap 'kill "$DAEMON" 2>/dev/null || true; rm -rf "$HOME_DIR"' EXIT
export MINERVA_HOME="$HOME_DIR"
MODELS=${MINERVA_MODELS:-$HOME/.minerva/models}
$BIN/minervad --socket "$HOME_DIR/d.sock" --models-dir "$MODELS" --threads "$THREADS" ${MINERVAD_ARGS:-} 2>"$HOME_DIR/log" &
DAEMON=$!
export MINERVA_ADDR="$HOME_DIR/d.sock"
$BIN/minerva pull smollm2-135m >&2
MODEL=$($BIN/minerva --json models show smollm2-135m | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
# Warm-up: loads the model into the daemon.
$BIN/minerva run smollm2-135m "$PROMPT" --max-tokens 8 >/dev/null

# Results go to files and are read afterwards: a consumer started in the same pipeline would
# compete for the cores while the model runs.
for i in $(seq "$ROUNDS"); do
  $BIN/minerva --json run smollm2-135m "$PROMPT" --max-tokens "$TOKENS" >"$HOME_DIR/daemon.$i.json"
  $BIN/examples/llama_direct "$MODEL" "$PROMPT" "$TOKENS" "$THREADS" --chat >"$HOME_DIR/direct.$i.json" 2>/dev/null
done
python3 - "$HOME_DIR" "$ROUNDS" >"$HOME_DIR/rows.jsonl" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(1, n + 1):
    s = json.load(open(f"{d}/daemon.{i}.json"))["stats"]
    x = json.load(open(f"{d}/direct.{i}.json"))
    for side, r in (("daemon", s), ("direct", x)):
        print(json.dumps({"side": side, **{k: r[k] for k in ("ttft_ms", "decode_tokens_per_s", "prompt_tokens", "generated_tokens")}}))
PY
cat "$HOME_DIR/rows.jsonl" >&2
python3 - "$HOME_DIR/rows.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(side, key):
    return statistics.median(r[key] for r in rows if r["side"] == side)
d_tps, x_tps = med("daemon", "decode_tokens_per_s"), med("direct", "decode_tokens_per_s")
d_ttft, x_ttft = med("daemon", "ttft_ms"), med("direct", "ttft_ms")
print(f"median of {len(rows)//2} rounds, {rows[0]['prompt_tokens']} prompt tokens, {rows[0]['generated_tokens']} generated")
print(f"decode tok/s  daemon {d_tps:7.1f}  direct {x_tps:7.1f}  ratio {d_tps/x_tps:.3f}")
print(f"TTFT ms       daemon {d_ttft:7.1f}  direct {x_ttft:7.1f}  ratio {d_ttft/x_ttft:.3f}")
PY
