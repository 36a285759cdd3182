#!/usr/bin/env bash
# Speculative decoding by prompt lookup against plain decoding: input-grounded prompts (fix the
# typos of a text, copy and extend a JSON list, rename a variable in a function) and one that
# is not (a short story), greedy, the daemon warm, rounds alternating so drift on the machine
# hits both sides alike. Reports decode tok/s (medians), the acceptance rate and whether the
# texts are the same. Run on a quiet machine.
#
#   bench/speculative.sh [ROUNDS=5] [TOKENS=160] [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
TOKENS=${2:-160}
THREADS=${3:-2}

# shellcheck source=bench/warm-daemon.sh
source bench/warm-daemon.sh

cat >"$HOME_DIR/typos.txt" <<'TXT'
Fix the typos in this text and write it out again in full:

The quick brown fox jumpd over the lazy dog. Then the fox ran into the forrest, where it met a friendly bear who was looking for honey. The bear asked the fox if it had seen any bees, and the fox said that it had seen a hive near the old oak tree by the river.
TXT
cat >"$HOME_DIR/json.txt" <<'TXT'
Copy this list exactly, then add one more city in the same format:
{"city": "Paris", "country": "France", "population": 2148000},
{"city": "Berlin", "country": "Germany", "population": 3645000},
{"city": "Madrid", "country": "Spain", "population": 3223000},
{"city": "Rome", "country": "Italy", "population": 2873000},
TXT
cat >"$HOME_DIR/rename.txt" <<'TXT'
Rewrite this Python function with the variable x renamed to count:

def total(items):
    x = 0
    for item in items:
        if item.price > 0:
            x = x + item.price * item.quantity
    return x
TXT
echo "Tell me a short story about a lighthouse keeper." >"$HOME_DIR/story.txt"
$BIN/minerva run smollm2-135m "Hi" --max-tokens 4 >/dev/null

for i in $(seq "$ROUNDS"); do
  for p in typos json rename story; do
    $BIN/minerva --json run smollm2-135m "$(cat "$HOME_DIR/$p.txt")" --max-tokens "$TOKENS" >"$HOME_DIR/$p-plain-$i.json"
    $BIN/minerva --json run smollm2-135m "$(cat "$HOME_DIR/$p.txt")" --max-tokens "$TOKENS" --speculate >"$HOME_DIR/$p-spec-$i.json"
  done
done
python3 - "$HOME_DIR" "$ROUNDS" <<'PY'
import json, statistics, sys
home, rounds = sys.argv[1], int(sys.argv[2])
print(f"{'prompt':8} {'plain tok/s':>12} {'spec tok/s':>11} {'ratio':>6} {'accepted':>9} {'tokens':>7}  same text")
for p in ["typos", "json", "rename", "story"]:
    plain = [json.load(open(f"{home}/{p}-plain-{i}.json")) for i in range(1, rounds + 1)]
    spec = [json.load(open(f"{home}/{p}-spec-{i}.json")) for i in range(1, rounds + 1)]
    a = statistics.median(r["stats"]["decode_tokens_per_s"] for r in plain)
    b = statistics.median(r["stats"]["decode_tokens_per_s"] for r in spec)
    d = sum(r["stats"]["drafted_tokens"] for r in spec)
    acc = sum(r["stats"]["accepted_tokens"] for r in spec)
    same = all(x["text"] == y["text"] for x, y in zip(plain, spec))
    n = plain[0]["stats"]["generated_tokens"]
    print(f"{p:8} {a:12.1f} {b:11.1f} {b / a:6.3f} {acc:4}/{d:<4} {n:7}  {same}")
PY
