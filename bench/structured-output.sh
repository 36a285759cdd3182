#!/usr/bin/env bash
# What a structured-output constraint costs in decode speed: the same chat prompt with and
# without a JSON Schema, greedy, the same token budget, the daemon warm. The constrained run
# goes until max_tokens (an unbounded array), so both decode the same number of tokens; rounds
# alternate so drift on the machine hits both sides alike. Run on a quiet machine.
#
#   bench/structured-output.sh [ROUNDS=7] [TOKENS=128] [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-7}
TOKENS=${2:-128}
THREADS=${3:-2}
PROMPT="List the people in a small company with their names, ages and roles, as JSON."

# shellcheck source=bench/warm-daemon.sh
source bench/warm-daemon.sh
cat >"$HOME_DIR/schema.json" <<'JSON'
{"type": "array", "items": {"type": "object", "properties": {
  "name": {"type": "string", "maxLength": 24},
  "age": {"type": "integer", "minimum": 18, "maximum": 99},
  "role": {"enum": ["engineer", "designer", "manager", "sales", "support"]}},
  "required": ["name", "age", "role"], "additionalProperties": false}}
JSON
# Warm-up: loads the model and builds the vocabulary's token trie.
$BIN/minerva run smollm2-135m "$PROMPT" --max-tokens 8 --json-schema "$HOME_DIR/schema.json" >/dev/null 2>&1

for i in $(seq "$ROUNDS"); do
  $BIN/minerva --json run smollm2-135m "$PROMPT" --max-tokens "$TOKENS" --ignore-eos >"$HOME_DIR/free-$i.json"
  $BIN/minerva --json run smollm2-135m "$PROMPT" --max-tokens "$TOKENS" \
    --json-schema "$HOME_DIR/schema.json" >"$HOME_DIR/json-$i.json" 2>/dev/null
done
python3 - "$HOME_DIR" "$ROUNDS" <<'PY'
import json, statistics, sys
home, rounds = sys.argv[1], int(sys.argv[2])
def rates(kind):
    runs = [json.load(open(f"{home}/{kind}-{i}.json"))["stats"] for i in range(1, rounds + 1)]
    return [r["decode_tokens_per_s"] for r in runs], [r["generated_tokens"] for r in runs]
free, n_free = rates("free")
constrained, n_json = rates("json")
print(f"free text:   decode {statistics.median(free):.1f} tok/s median of {rounds} ({min(free):.1f}-{max(free):.1f}), tokens {n_free}")
print(f"json schema: decode {statistics.median(constrained):.1f} tok/s median of {rounds} ({min(constrained):.1f}-{max(constrained):.1f}), tokens {n_json}")
print(f"ratio (json / free): {statistics.median(constrained) / statistics.median(free):.3f}")
PY
