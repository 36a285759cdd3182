// A stock Node.js gRPC client of minervad: @grpc/grpc-js (gRPC in pure JavaScript, no C core)
// with the .proto files loaded at run time by @grpc/proto-loader, and clients made with
// insecure credentials and no options at all, as a new user would write it. Prints one JSON
// object with what each call returned, for tests/tests/stock_clients.rs to check.
//
// Usage: NODE_PATH=.../node_modules node node_client.js TARGET MODEL
// TARGET: unix:///path/to/minervad.sock, unix:/path/to/minervad.sock or 127.0.0.1:PORT.

"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [target, model] = process.argv.slice(2);
const definition = protoLoader.loadSync(
  ["minerva/v1/daemon.proto", "minerva/v1/generate.proto"],
  { includeDirs: [path.join(__dirname, "../../proto")], keepCase: true, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).minerva.v1;
const credentials = grpc.credentials.createInsecure();
const daemon = new v1.DaemonService(target, credentials);
const generate = new v1.GenerateService(target, credentials);
const deadline = (seconds) => ({ deadline: Date.now() + seconds * 1000 });

function unary(client, method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, deadline(60), (err, response) =>
      err ? reject(err) : resolve(response),
    ),
  );
}

// The streamed token ids and the final stats of one Generate call.
function generateAll(request) {
  return new Promise((resolve, reject) => {
    const tokens = [];
    let done = null;
    const call = generate.Generate(request, deadline(300));
    call.on("data", (response) => {
      if (response.event === "token") tokens.push(response.token.id);
      else if (response.event === "done") done = response.done;
    });
    call.on("error", reject);
    call.on("end", () => resolve({ tokens, done }));
  });
}

async function main() {
  const out = { target };
  out.version = (await unary(daemon, "Status", {})).version;
  const { tokens, done } = await generateAll({
    model,
    prompt: "The capital of France is",
    sampling: { temperature: 0 },
    max_tokens: 8,
  });
  out.tokens = tokens;
  out.text = done.text;
  out.generated_tokens = done.generated_tokens;
  // A streaming call that fails: its status code, by name.
  try {
    await generateAll({ model: "no-such-model", prompt: "x", max_tokens: 1 });
    out.bad_model = "OK";
  } catch (err) {
    out.bad_model = grpc.status[err.code];
  }
  daemon.close();
  generate.close();
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
