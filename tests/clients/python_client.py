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
    try:
        generate_pb2_grpc.GenerateServiceStub(channel).Tokenize(
            generate_pb2.TokenizeRequest(model="no-such-model", prompt="x"), timeout=60
        )
        out["bad_model"] = "OK"
    except grpc.RpcError as e:
        out["bad_model"] = e.code().name
print(json.dumps(out))
