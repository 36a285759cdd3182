"""Checks structured-output answers with the JSON Schema project's Python validator.

Reads one JSON object per line on stdin, {"schema": ..., "text": ...} or {"regex": ..., "text":
...}, and prints one JSON object: how many were checked and what failed, with the reason.
"""
import json
import re
import sys

import jsonschema

checked = 0
failures = []
for line in sys.stdin:
    case = json.loads(line)
    checked += 1
    text = case["text"]
    try:
        if "schema" in case:
            schema = case["schema"]
            jsonschema.validators.validator_for(schema).check_schema(schema)
            jsonschema.validate(json.loads(text), schema)
        elif re.fullmatch(case["regex"], text) is None:
            raise ValueError(f"does not match {case['regex']!r}")
    except Exception as e:  # every reason is reported, none hidden
        failures.append({"text": text, "error": f"{type(e).__name__}: {e}"})
print(json.dumps({"checked": checked, "failures": failures}))
