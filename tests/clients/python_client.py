"""A stock Python gRPC client of minervad: stubs generated from proto/ with grpcio-tools, a
channel made with no options at all, as a new user would write it. Prints one JSON object with
what each call returned, for tests/tests/stock_clients.rs to check.

Usage: python_client.py STUBS_DIR TARGET MODEL"""

import json
import sys

import grpc

sys.path.insert(0, sys.argv[1])
from minerva.v1 import daemon_pb2, daemon_pb2_grpc  # noqa: E402
from minerva.v1 import generate_pb2, generate_pb2_grpc  # noqa: E402

target, model = sys.argv[2], sys.argv[3]
out = {"target": target}
with grpc.insecure_channel(target) as channel:
    status = daemon_pb2_grpc.DaemonServiceStub(channel).Status(
        daemon_pb2.StatusRequest(), timeout=60
    )
    out["version"] = status.version
    request = generate_pb2.GenerateRequest(
        model=model, prompt="The capital of France is", max_tokens=8
    )
    request.sampling.temperature = 0.0
    tokens, done = [], None
    for event in generate_pb2_grpc.GenerateServiceStub(channel).Generate(request, timeout=300):
        if event.HasField("token"):
            tokens.append(event.token.id)
        else:
            done = event.done
    out["tokens"] = tokens
    out["text"] = done.text
    out["generated_tokens"] = done.generated_tokens
    # The same prompt as token ids, with logprobs (prompt too), a logit bias map and stop
    # token ids: oneof, nested messages, maps and repeated fields as Python sets them.
    stub = generate_pb2_grpc.GenerateServiceStub(channel)
    ids = stub.Tokenize(
        generate_pb2.TokenizeRequest(model=model, prompt="The capital of France is"), timeout=60
    ).tokens
    request = generate_pb2.GenerateRequest(model=model, max_tokens=8)
    request.tokens.ids.extend(ids)
    request.logprobs.top = 3
    request.logprobs.prompt = True
    request.sampling.logit_bias[5] = -100.0
    request.stop_token_ids.append(0)
    scored, prompt_logprobs = [], None
    for event in stub.Generate(request, timeout=300):
        if event.HasField("prompt_logprobs"):
            prompt_logprobs = event.prompt_logprobs
        elif event.HasField("token"):
            t = event.token
            scored.append(
                {
                    "id": t.id,
                    "logprob": t.logprobs.logprob,
                    "top": [[a.id, a.logprob] for a in t.logprobs.top],
                }
            )
    out["by_ids"] = scored
    out["prompt_ids"] = list(ids)
    out["prompt_logprob_ids"] = list(prompt_logprobs.ids) if prompt_logprobs else None
    # Two samples under a JSON Schema, named for Abort, ended by an id from another channel's
    # point of view: a schema as text, n, request_id, and each sample's own stats.
    request = generate_pb2.GenerateRequest(model=model, max_tokens=40, n=2)
    request.chat.messages.add(role="user", content="Is the sky blue? Answer in JSON.")
    request.constraint.json_schema = json.dumps(
        {
            "type": "object",
            "properties": {"answer": {"enum": ["yes", "no"]}},
            "required": ["answer"],
            "additionalProperties": False,
        }
    )
    request.sampling.temperature = 0.7
    request.sampling.seed = 3
    request.request_id = "python-samples"
    samples = {}
    for event in stub.Generate(request, timeout=300):
        if event.HasField("done"):
            d = event.done
            samples[d.sample] = {
                "text": d.text,
                "complete": d.constraint_complete,
                "request_id": d.request_id,
            }
    out["samples"] = [samples[k] for k in sorted(samples)]
    # The remaining knobs: penalties, a stop string, ignore_eos, a regex and a choice.
    request = generate_pb2.GenerateRequest(model=model, prompt="Hi", max_tokens=3, ignore_eos=True)
    request.sampling.presence_penalty = 0.5
    request.sampling.frequency_penalty = 0.5
    request.stop.append("never-in-the-answer")
    done = [e.done for e in stub.Generate(request, timeout=300) if e.HasField("done")][0]
    out["ignore_eos_tokens"] = done.generated_tokens
    request = generate_pb2.GenerateRequest(model=model, prompt="A year:", max_tokens=8)
    request.constraint.regex = "(19|20)[0-9]{2}"
    done = [e.done for e in stub.Generate(request, timeout=300) if e.HasField("done")][0]
    out["regex_text"] = done.text
    request = generate_pb2.GenerateRequest(model=model, prompt="Red or blue?", max_tokens=8)
    request.constraint.choice.options.extend(["red", "blue"])
    done = [e.done for e in stub.Generate(request, timeout=300) if e.HasField("done")][0]
    out["choice_text"] = done.text
    aborted = stub.Abort(generate_pb2.AbortRequest(request_ids=["python-samples"]), timeout=60)
    out["abort_after_end"] = {"aborted": list(aborted.aborted), "unknown": list(aborted.unknown)}
    try:
        generate_pb2_grpc.GenerateServiceStub(channel).Tokenize(
            generate_pb2.TokenizeRequest(model="no-such-model", prompt="x"), timeout=60
        )
        out["bad_model"] = "OK"
    except grpc.RpcError as e:
        out["bad_model"] = e.code().name
print(json.dumps(out))
