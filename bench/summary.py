"""The summary statistics of Minerva's BenchResult (proto/minerva/v1/bench.proto), for the Python
scripts that write results in that schema (bench/peers, bench/gpu)."""
import math


def summarize(values):
    """n, mean, stddev (sample), min, p50, p90, p99 (linear interpolation), max of the finite values."""
    v = sorted(x for x in values if math.isfinite(x))
    if not v:
        return {"n": 0}
    n = len(v)
    mean = sum(v) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else 0.0

    def pct(p):
        r = p / 100 * (n - 1)
        lo, hi = math.floor(r), math.ceil(r)
        return v[lo] + (v[hi] - v[lo]) * (r - lo)

    return {"n": n, "mean": mean, "stddev": sd, "min": v[0], "p50": pct(50), "p90": pct(90),
            "p99": pct(99), "max": v[-1]}
