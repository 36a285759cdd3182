#!/usr/bin/env python3
"""Turns what bench/gpu/run.sh measured (gpu-results.tar.gz, unpacked) into one result file:

  {"minerva": BenchResult, "peer": BenchResult, "ratio": [...],     # as `minerva bench --peer`
   "concurrency": [{"sequences": N, "minerva": {...}, "peer": {...}, "ratio": {...}}],
   "machine": "...", "command": "..."}

The "minerva"/"peer"/"ratio" part has the schema of `minerva bench --peer llama.cpp --json`, so
`minerva bench chart` and `minerva bench compare` read it. The peer's side is llama-bench's
own figures recast in that schema: pp512 prompt tokens/s and TTFT (512 tokens / its rate),
tg128 decode tokens/s and time per token. Concurrency compares llama-batched-bench's aggregate
rates with Minerva's pp128+tg128 runs at the same number of clients: generated tokens over wall
time (prompts included) and time per output token, for each KV layout (Minerva's
--kv-per-sequence against batched-bench's default, Minerva's shared pool against its -kvu).

Usage: report.py RESULTS_DIR OUT.json
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from summary import summarize  # noqa: E402  (bench/summary.py)


def metric(test, name):
    for m in test["metrics"]:
        if m["name"] == name:
            return m["summary"]
    return {}


def quant_of(path):
    return "Q4_K_M" if "q4_k_m" in path else "F16"


def main():
    src, out = sys.argv[1], sys.argv[2]
    minerva = json.load(open(os.path.join(src, "minerva-single.json")))
    # Models were named by path on the GPU machine: keep the file name.
    short = lambda m: os.path.basename(m).removesuffix(".gguf")
    for t in minerva["tests"]:
        t["model"] = short(t["model"])
    for l in minerva["loads"]:
        l["model"] = short(l["model"])
    # The candle backend on CUDA (run.sh's candle step), when it ran: its tests join Minerva's
    # (each test names its backend), so the chart shows both backends beside the peer.
    candle_path = os.path.join(src, "candle-single.json")
    if os.path.exists(candle_path):
        candle = json.load(open(candle_path))
        for t in candle["tests"]:
            t["model"] = short(t["model"])
            minerva["tests"].append(t)
        for l in candle["loads"]:
            l["model"] = short(l["model"])
            minerva["loads"].append(l)
    lb = json.load(open(os.path.join(src, "peer-llama-bench.json")))
    # Minerva's model names, by quantization (the same files llama-bench ran).
    names = {quant_of(l["path"].lower()): l["model"] for l in minerva["loads"]}
    peer_tests = []
    for t in lb:
        model = names[quant_of(t["model_filename"].lower())]
        ts = t["samples_ts"]
        if t["n_prompt"] and not t["n_gen"]:
            test = f"pp{t['n_prompt']}"
            metrics = [("prompt_tokens_per_s", ts),
                       ("ttft_ms", [t["n_prompt"] / x * 1e3 for x in ts])]
        else:
            test = f"tg{t['n_gen']}"
            metrics = [("decode_tokens_per_s", ts), ("tpot_ms", [1e3 / x for x in ts])]
        peer_tests.append({
            "model": model, "backend": "llama.cpp (llama-bench)", "test": test,
            "prompt_tokens": t["n_prompt"], "new_tokens": t["n_gen"], "concurrency": 1,
            "runs": [], "metrics": [{"name": k, "summary": summarize(v)} for k, v in metrics],
        })
    first = lb[0]
    peer = {
        "id": "llama-bench", "status": "done", "error": "",
        "machine": {"cpu_model": first["cpu_info"], "gpu": first["gpu_info"],
                    "system": "llama.cpp llama-bench (same libllama)",
                    "build": f"backends {first['backends']}, n_gpu_layers {first['n_gpu_layers']}, "
                             f"flash_attn {first['flash_attn']}, n_batch {first['n_batch']}, "
                             f"n_ubatch {first['n_ubatch']}, threads {first['n_threads']}"},
        "loads": [], "tests": peer_tests, "resources": {},
    }
    ratio = []
    for pt in peer_tests:
        for mt in minerva["tests"]:
            if (mt["model"], mt["test"]) != (pt["model"], pt["test"]):
                continue
            for m in pt["metrics"]:
                stat = "p50" if m["name"].endswith("_ms") else "mean"
                a, b = m["summary"].get(stat), metric(mt, m["name"]).get(stat)
                if a and b:
                    ratio.append({"model": pt["model"], "backend": mt["backend"],
                                  "test": pt["test"], "metric": m["name"],
                                  "stat": stat, "a": a, "b": b, "ratio": b / a})

    conc = []
    # Minerva's KV layout and the peer run that matches it.
    for layout, peer_file in (("per-sequence", "peer-batched-bench.jsonl"),
                              ("shared", "peer-batched-bench-kvu.jsonl")):
        path = os.path.join(src, peer_file)
        if not os.path.exists(path):
            continue
        for row in (json.loads(l) for l in open(path) if l.startswith("{")):
            n = row["pl"]
            path = os.path.join(src, f"minerva-{layout}-c{n}.json")
            if not os.path.exists(path):
                continue
            mt = json.load(open(path))["tests"][0]
            ttft = metric(mt, "ttft_ms")
            tpot = metric(mt, "tpot_ms")
            # Generated tokens over wall time, the prompts' time included, on both sides.
            mine = {"generated_tokens_per_s": mt["aggregate_tokens_per_s"],
                    "ttft_ms_p50": ttft.get("p50"), "ttft_ms_p99": ttft.get("p99"),
                    "tpot_ms_p50": tpot.get("p50"), "runs": len(mt["runs"])}
            theirs = {"generated_tokens_per_s": n * row["tg"] / row["t"],
                      "decode_tokens_per_s": row["speed_tg"],
                      "tpot_ms": row["t_tg"] * 1e3 / row["tg"],
                      "prompt_phase_ms": row["t_pp"] * 1e3}
            conc.append({"kv": layout, "sequences": n, "prompt_tokens": row["pp"],
                         "new_tokens": row["tg"], "minerva": mine, "peer": theirs,
                         "ratio": {"generated_tokens_per_s": mine["generated_tokens_per_s"]
                                   / theirs["generated_tokens_per_s"],
                                   "tpot_ms": mine["tpot_ms_p50"] / theirs["tpot_ms"]}})
    # candle on CUDA with 1 and 8 clients (it runs one sequence's step at a time).
    candle_conc = []
    for n in (1, 8):
        path = os.path.join(src, f"candle-c{n}.json")
        if not os.path.exists(path):
            continue
        mt = json.load(open(path))["tests"][0]
        ttft, tpot = metric(mt, "ttft_ms"), metric(mt, "tpot_ms")
        candle_conc.append({"sequences": n, "generated_tokens_per_s": mt["aggregate_tokens_per_s"],
                            "ttft_ms_p50": ttft.get("p50"), "ttft_ms_p99": ttft.get("p99"),
                            "tpot_ms_p50": tpot.get("p50"), "runs": len(mt["runs"])})
    machine = open(os.path.join(src, "machine.txt")).read() if os.path.exists(
        os.path.join(src, "machine.txt")) else ""
    # The same text's perplexity on each backend and device (run.sh's candle step): one line each.
    ppl_path = os.path.join(src, "candle-perplexity.txt")
    ppl = [l.strip() for l in open(ppl_path)] if os.path.exists(ppl_path) else []
    result = {"minerva": minerva, "peer": peer, "ratio": ratio, "concurrency": conc,
              "candle_concurrency": candle_conc, "perplexity_check": ppl, "machine": machine,
              "command": "bash bench/gpu/run.sh build models peer minerva candle pack"}
    json.dump(result, open(out, "w"), indent=1)
    print("| model | test | metric | Minerva backend | Minerva | llama.cpp | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in ratio:
        print(f"| {r['model']} | {r['test']} | {r['metric']} ({r['stat']}) | {r['backend']} | {r['b']:.1f} | {r['a']:.1f} | {r['ratio']:.3f} |")
    print()
    print("| KV | sequences | Minerva gen tok/s | llama.cpp gen tok/s | ratio | Minerva TpT p50 ms | llama.cpp TpT ms | ratio | Minerva TTFT p50 / p99 ms | llama.cpp prompt phase ms | llama.cpp S_TG |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for c in conc:
        m, p, r = c["minerva"], c["peer"], c["ratio"]
        print(f"| {c['kv']} | {c['sequences']} | {m['generated_tokens_per_s']:.0f} | {p['generated_tokens_per_s']:.0f} | "
              f"{r['generated_tokens_per_s']:.3f} | {m['tpot_ms_p50']:.2f} | {p['tpot_ms']:.2f} | {r['tpot_ms']:.3f} | "
              f"{m['ttft_ms_p50']:.0f} / {m['ttft_ms_p99']:.0f} | {p['prompt_phase_ms']:.0f} | {p['decode_tokens_per_s']:.0f} |")

    if candle_conc:
        print()
        print("| candle, clients | gen tok/s | TpT p50 ms | TTFT p50 / p99 ms |")
        print("| --- | --- | --- | --- |")
        for c in candle_conc:
            print(f"| {c['sequences']} | {c['generated_tokens_per_s']:.0f} | {c['tpot_ms_p50']:.2f} | "
                  f"{c['ttft_ms_p50']:.0f} / {c['ttft_ms_p99']:.0f} |")


if __name__ == "__main__":
    main()
