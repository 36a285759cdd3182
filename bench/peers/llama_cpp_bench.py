#!/usr/bin/env python3
"""The peer: llama.cpp itself (through llama-cpp-python's thin ctypes layer), running the same
tests as a Minerva benchmark job on the same GGUF, and printing a result in Minerva's
BenchResult JSON schema (proto/minerva/v1/bench.proto), so the two compare field by field.

Input (a JSON file, written by `minerva bench --peer llama.cpp`):
  {"model": NAME, "path": GGUF, "threads": N, "context_length": N, "runs": N, "warmup_runs": N,
   "seed": N, "flash_attn": "auto" | "on" | "off" (default off, llama-cpp-python's),
   "tests": [{"test": NAME, "prompt": [token ids] | null, "prompt_tokens": N,
   "new_tokens": N}]}
Each request: KV cache cleared, the prompt decoded in batches of 2048 (micro-batches of 512),
then greedy decoding of new_tokens tokens one at a time, as minervad does. Timings:
TTFT = prompt decode + first argmax; decode tokens/s over the tokens after the first.
A test with "max_draft": N (a `--speculative` job's TEST/spec) decodes through llama-cpp-python's
own speculative path instead: Llama.generate with its prompt-lookup drafter
(LlamaPromptLookupDecoding, num_pred_tokens N), greedy, the same new_tokens. With
MINERVA_PEER_LOOKUP set to the folder bench/peers/llama-cpp-tools.sh prints, it runs llama.cpp's
own C++ prompt lookup instead: llama-lookup (--spec-draft-n-max N, greedy, the same new_tokens and flash
attention), one process per run, on the prompt's text (its tokens detokenized with the special
tokens written out, which llama-lookup tokenizes back: the record's prompt_tokens is the count it
reports). Its timings are its own: decode tokens/s is its "decoded N tokens in T s", TTFT its
prompt's "encoded" time; it prints text, not token ids, so tokens_sha256 hashes that text
tokenized again (the answer's own ids wherever tokenization round-trips).
"""
import ctypes
import hashlib
import json
import os
import platform
import random
import struct
import subprocess
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from summary import summarize  # noqa: E402  (bench/summary.py)


def one_request(llm, n_vocab, prompt, new_tokens):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
    tok = int(np.argmax(logits))
    times = [time.perf_counter()]
    ids = [tok]
    for _ in range(new_tokens - 1):
        llm.eval([tok])
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
        tok = int(np.argmax(logits))
        times.append(time.perf_counter())
        ids.append(tok)
    return timed(prompt, ids, t0, times)


def one_request_lookup(llm, prompt, new_tokens):
    """One greedy request through llama-cpp-python's speculative generate (drafts from its
    prompt-lookup drafter, verified in one batch): timed as one_request times its tokens."""
    llm.reset()
    # Its drafts and forward passes, counted: each pass after the prompt's yields one token
    # plus the drafts it accepted.
    drafter, evaluate = llm.draft_model, llm.eval
    counts = {"drafted": 0, "passes": 0}

    def draft(input_ids):
        d = drafter(input_ids)
        counts["drafted"] += len(d)
        return d

    def eval_counted(tokens):
        counts["passes"] += 1
        return evaluate(tokens)

    llm.draft_model, llm.eval = draft, eval_counted
    t0 = time.perf_counter()
    times, ids = [], []
    try:
        for tok in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                repeat_penalty=1.0, reset=True):
            times.append(time.perf_counter())
            ids.append(int(tok))
            if len(ids) == new_tokens:
                break
    finally:
        llm.draft_model, llm.eval = drafter, evaluate
    record, gaps = timed(prompt, ids, t0, times)
    record["drafted_tokens"] = counts["drafted"]
    record["accepted_tokens"] = max(0, len(ids) - counts["passes"])
    return record, gaps


def one_request_lookup_cpp(spec, llm, prompt, new_tokens, max_draft, tools):
    """One greedy request through llama.cpp's C++ llama-lookup (see the module's doc)."""
    import re
    text = llm.detokenize(prompt, special=True).decode("utf-8", errors="replace")
    # On the command line: a prompt file (-f) loses its last newline, and a chat prompt ends
    # with one.
    p = subprocess.run(
        [os.path.join(tools, "llama-lookup"), "-m", spec["path"], "-p", text,
         "-n", str(new_tokens), "--spec-draft-n-max", str(max_draft), "-t", str(spec["threads"]),
         "-tb", str(spec["threads"]), "-c", str(spec["context_length"]), "-b", "2048",
         "-ub", "512", "-fa", spec.get("flash_attn", "off"), "--temp", "0", "--top-k", "1",
         "--repeat-penalty", "1.0", "--ignore-eos"],
        capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"llama-lookup failed ({p.returncode}): {p.stderr[-2000:]}")
    log = p.stderr

    def grab(pattern, kind=float):
        m = re.search(pattern, log)
        if not m:
            raise SystemExit(f"llama-lookup printed no {pattern!r}: {log[-2000:]}")
        return kind(m.group(1))
    n_in = grab(r"encoded\s+(\d+) tokens", int)
    enc_s = grab(r"encoded\s+\d+ tokens in\s+([\d.]+) seconds")
    n_out = grab(r"decoded\s+(\d+) tokens", int)
    dec_s = grab(r"decoded\s+\d+ tokens in\s+([\d.]+) seconds")
    # It echoes the prompt, then the answer.
    at = p.stdout.find(text)
    generated = p.stdout[at + len(text):] if at >= 0 else p.stdout
    return {
        "prompt_tokens": n_in,
        "generated_tokens": n_out,
        "ttft_ms": enc_s * 1e3,
        "tpot_ms": dec_s * 1e3 / n_out if n_out else 0.0,
        "e2e_ms": (enc_s + dec_s) * 1e3,
        "prompt_tokens_per_s": n_in / enc_s if enc_s > 0 else 0.0,
        "decode_tokens_per_s": n_out / dec_s if dec_s > 0 else 0.0,
        "queue_ms": 0.0,
        # Its answer as token ids again, to compare with the plain runs' ids (it may decode a
        # few tokens past new_tokens, and logs a blank line after the answer).
        "tokens_sha256": ids_sha256(
            llm.tokenize(generated.encode(), add_bos=False, special=True)[:new_tokens]),
        "drafted_tokens": grab(r"n_drafted\s*=\s*(\d+)", int),
        "accepted_tokens": grab(r"n_accept\s*=\s*(\d+)", int),
    }, []


def ids_sha256(ids):
    """The sha256 of token ids as Minerva's records hash them (little-endian u32s)."""
    return hashlib.sha256(b"".join(struct.pack("<I", t) for t in ids)).hexdigest()


def timed(prompt, ids, t0, times):
    """A run record (and its inter-token gaps) from the tokens and when each came."""
    ttft = (times[0] - t0) * 1e3
    n = len(ids)
    decode_s = times[-1] - times[0]
    return {
        "prompt_tokens": len(prompt),
        "generated_tokens": n,
        "ttft_ms": ttft,
        "tpot_ms": decode_s * 1e3 / (n - 1) if n > 1 else 0.0,
        "e2e_ms": (times[-1] - t0) * 1e3,
        "prompt_tokens_per_s": len(prompt) / (ttft / 1e3) if ttft > 0 else 0.0,
        "decode_tokens_per_s": (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
        "queue_ms": 0.0,
        "tokens_sha256": ids_sha256(ids),
    }, [(b - a) * 1e3 for a, b in zip(times, times[1:])]


def flash_attn(policy):
    """llama.cpp's flash-attention setting as Minerva's run had it ("auto", "on", "off").
    llama-cpp-python takes a bool and maps True to LLAMA_FLASH_ATTN_TYPE_ENABLED when it builds
    the context parameters; for "auto" (llama.cpp's own default, which it resolves per device)
    that constant is pointed at LLAMA_FLASH_ATTN_TYPE_AUTO, so both sides resolve it alike."""
    if policy == "auto":
        cpp = llama_cpp.llama_cpp
        cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED = cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        return True
    return policy == "on"


def run_test(spec, index, extra_bufts):
    """One test in this process: load the model, warm up, measure. Returns (test, load)."""
    if not extra_bufts:
        default = llama_cpp.llama_cpp.llama_model_default_params

        def without_extra_bufts():
            p = default()
            p.use_extra_bufts = False
            return p

        llama_cpp.llama_cpp.llama_model_default_params = without_extra_bufts
    test = spec["tests"][index]
    max_draft = test.get("max_draft") or 0
    tools = os.environ.get("MINERVA_PEER_LOOKUP") if max_draft else None
    draft = {}
    if max_draft and not tools:
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
        draft = {"draft_model": LlamaPromptLookupDecoding(num_pred_tokens=max_draft)}
    t = time.perf_counter()
    llm = Llama(model_path=spec["path"], n_ctx=spec["context_length"], n_threads=spec["threads"],
                n_threads_batch=spec["threads"], n_batch=2048, n_ubatch=512,
                flash_attn=flash_attn(spec.get("flash_attn", "off")), verbose=False, **draft)
    load_ms = (time.perf_counter() - t) * 1e3
    n_vocab = llm.n_vocab()
    prompt = test.get("prompt")
    if not prompt:
        rng = random.Random(spec.get("seed", 0) * 1000 + index)
        prompt = [rng.randrange(n_vocab) for _ in range(test["prompt_tokens"])]
        if llm.token_bos() >= 0:
            prompt[0] = llm.token_bos()
    new = test["new_tokens"]
    if tools:
        request = lambda: one_request_lookup_cpp(spec, llm, prompt, new, max_draft, tools)
    elif max_draft:
        request = lambda: one_request_lookup(llm, prompt, new)
    else:
        request = lambda: one_request(llm, n_vocab, prompt, new)
    for _ in range(spec["warmup_runs"]):
        request()
    runs, gaps = [], []
    wall = time.perf_counter()
    for r in range(spec["runs"]):
        rec, g = request()
        runs.append({"run": r, "client": 0, **rec})
        gaps.extend(g)
    wall = time.perf_counter() - wall
    col = lambda k: [x[k] for x in runs]
    version = getattr(llama_cpp, "__version__", "?")
    backend = f"llama.cpp (llama-cpp-python {version})"
    if tools:
        source = open(os.path.join(tools, "SOURCE.txt")).read().strip()
        backend = f"llama.cpp's llama-lookup ({source})"
    return {
        "model": spec["model"], "backend": backend, "test": test["test"],
        "prompt_tokens": runs[0]["prompt_tokens"] if runs else len(prompt), "new_tokens": new, "concurrency": 1, "runs": runs,
        "metrics": [{"name": k, "summary": summarize(v)} for k, v in [
            ("ttft_ms", col("ttft_ms")), ("tpot_ms", col("tpot_ms")), ("itl_ms", gaps),
            ("e2e_ms", col("e2e_ms")), ("prompt_tokens_per_s", col("prompt_tokens_per_s")),
            ("decode_tokens_per_s", col("decode_tokens_per_s"))]],
        "aggregate_tokens_per_s": sum(col("generated_tokens")) / wall,
        "requests_per_s": len(runs) / wall,
        "deterministic": len(set(col("tokens_sha256"))) == 1 if len(runs) > 1 else None,
        "max_draft": max_draft,
        **drafts(runs),
    }, load_ms


def drafts(runs):
    """A speculating test's drafted and accepted tokens over its runs (none for a plain one)."""
    drafted = sum(r.get("drafted_tokens", 0) for r in runs)
    accepted = sum(r.get("accepted_tokens", 0) for r in runs)
    return {"drafted_tokens": drafted, "accepted_tokens": accepted,
            "acceptance_rate": accepted / drafted if drafted else 0.0}


def build_flags():
    """How install-llama-cpp-python.sh built this peer (empty for a venv made some other way)."""
    try:
        return open(os.path.join(sys.prefix, "minerva-build.txt")).read().strip()
    except OSError:
        return ""


def main():
    if sys.argv[1] == "--one":
        spec = json.load(open(sys.argv[2]))
        test, load_ms = run_test(spec, int(sys.argv[3]), sys.argv[4] == "1")
        json.dump({"test": test, "load_ms": load_ms}, sys.stdout)
        return
    spec_path = sys.argv[1]
    spec = json.load(open(spec_path))
    started = time.time()
    tests, load_ms, notes = [], None, []
    # Each test runs in a child process with llama.cpp's defaults. If llama.cpp crashes in a
    # kernel chosen for this CPU (a GCC 12 -O3 build without install-llama-cpp-python.sh's
    # CXXFLAGS faults in the AMX matmul on batches of more than one token), the test is run
    # again with the extra buffer types (AMX, weight repacking) off, and says so in its backend
    # field and the result's error: such a ratio is not like for like.
    for i in range(len(spec["tests"])):
        for extra in (True, False):
            p = subprocess.run([sys.executable, __file__, "--one", spec_path, str(i), "1" if extra else "0"],
                               capture_output=True, text=True)
            if p.returncode == 0:
                out = json.loads(p.stdout)
                if not extra:
                    out["test"]["backend"] += f"; extra buffer types off (the default died: {crash})"
                tests.append(out["test"])
                load_ms = load_ms if load_ms is not None else out["load_ms"]
                break
            if extra and p.returncode < 0:
                crash = f"signal {-p.returncode}"
                notes.append(f"{spec['tests'][i]['test']}: default build died with {crash}")
                continue
            raise SystemExit(f"peer test {spec['tests'][i]['test']} failed ({p.returncode}): {p.stderr[-2000:]}")
    version = getattr(llama_cpp, "__version__", "?")
    result = {
        "id": f"peer-{int(started)}", "status": "done", "error": "; ".join(notes),
        "machine": {
            "cpu_model": platform.processor() or platform.machine(), "cpu_threads": os.cpu_count() or 0,
            "os": f"{platform.system()} {platform.release()}",
            "system": f"llama.cpp via llama-cpp-python {version}", "version": version,
            "build": "; ".join(filter(None, [llama_cpp.llama_print_system_info().decode().strip(),
                                             build_flags()])),
        },
        "loads": [{"model": spec["model"], "path": spec["path"], "load_ms": load_ms or 0.0,
                   "loaded_by_job": True, "threads": spec["threads"],
                   "context_length": spec["context_length"],
                   "settings": {"flash_attn": spec.get("flash_attn", "off")},
                   "file_size_bytes": os.path.getsize(spec["path"])}],
        "tests": tests,
        "resources": {"gpu": "absent: CPU-only peer run"},
        "started_unix_s": started, "finished_unix_s": time.time(),
    }
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
