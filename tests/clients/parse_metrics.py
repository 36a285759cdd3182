"""Parses Prometheus text from stdin with the Prometheus project's own Python parser and prints
every sample as JSON: [[name, {labels}, value], ...]. A line the parser rejects fails the run."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
types = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
json.dump({"types": types, "samples": samples}, sys.stdout)
