// Reads a messagestore UI message stream with the Vercel AI SDK's own parser and message
// builder (the `ai` npm package), as a useChat front end would, and prints what it built.
//
// usage: MESSAGESTORE_AI_SDK_DIR=<folder with node_modules/ai> node ai_sdk_client.cjs URL
// prints one JSON line: {"header": ..., "chunks": [...], "message": UIMessage}; exits 1 when a
// chunk does not parse against the SDK's schema or the stream is not a valid UI message stream.
"use strict";
const path = require("path");
const ai = require(path.join(process.env.MESSAGESTORE_AI_SDK_DIR, "node_modules", "ai"));

async function main() {
  const url = process.argv[2];
  const response = await fetch(url);
  if (!response.ok) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
  const header = response.headers.get("x-vercel-ai-ui-message-stream");
  const parsed = ai.parseJsonEventStream({ stream: response.body, schema: ai.uiMessageChunkSchema });
  const chunks = [];
  const checked = parsed.pipeThrough(
    new TransformStream({
      transform(result, controller) {
        if (!result.success) throw new Error("chunk does not parse: " + result.error);
        chunks.push(result.value);
        controller.enqueue(result.value);
      },
    }),
  );
  let message = null;
  for await (const state of ai.readUIMessageStream({ stream: checked, terminateOnError: true })) {
    message = state;
  }
  process.stdout.write(JSON.stringify({ header, chunks, message }) + "\n");
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
