// A chat client built on the Vercel AI SDK's own transport (`DefaultChatTransport` of the `ai`
// npm package, what `useChat` uses) and its message builder (`readUIMessageStream`), against
// messagestore's /api/chat. Prints one JSON line per event on stdout:
//
//   {"event": "partial", "message": UIMessage}   (send: once the reply shows some text)
//   {"event": "final", "message": UIMessage}     (the stream ended with its finish)
//   {"event": "error", "error": "...", "message": UIMessage | null}  (the stream broke)
//   {"event": "none"}                            (reconnect: 204, no turn pending or running)
//   {"event": "connected"}                       (reconnect: the server answered with a stream)
//
// usage: MESSAGESTORE_AI_SDK_DIR=<folder with node_modules/ai> node ai_sdk_chat.cjs
//        send|regenerate|reconnect API_URL CHAT_ID [TEXT USER_MESSAGE_ID [MESSAGE_ID]]
"use strict";
const path = require("path");
const ai = require(path.join(process.env.MESSAGESTORE_AI_SDK_DIR, "node_modules", "ai"));

function say(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

async function follow(stream, { announcePartial }) {
  let message = null;
  let announced = false;
  let finished = false;
  const watched = stream.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        if (chunk.type === "finish") finished = true;
        controller.enqueue(chunk);
      },
    }),
  );
  try {
    for await (const state of ai.readUIMessageStream({ stream: watched, terminateOnError: true })) {
      message = state;
      const text = state.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
      if (announcePartial && !announced && text.length > 0) {
        announced = true;
        say({ event: "partial", message: state });
      }
    }
  } catch (error) {
    say({ event: "error", error: String(error), message });
    return;
  }
  if (!finished) {
    say({ event: "error", error: "the stream ended without a finish", message });
    return;
  }
  say({ event: "final", message });
}

async function main() {
  const [mode, api, chatId, text, userId, messageId] = process.argv.slice(2);
  const transport = new ai.DefaultChatTransport({ api });
  if (mode === "reconnect") {
    const stream = await transport.reconnectToStream({ chatId });
    if (stream === null) {
      say({ event: "none" });
      return;
    }
    say({ event: "connected" });
    await follow(stream, { announcePartial: false });
    return;
  }
  const user = { id: userId, role: "user", parts: [{ type: "text", text }] };
  const stream = await transport.sendMessages({
    chatId,
    messages: [user],
    trigger: mode === "regenerate" ? "regenerate-message" : "submit-message",
    messageId: mode === "regenerate" ? messageId : undefined,
    abortSignal: undefined,
  });
  await follow(stream, { announcePartial: mode === "send" });
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
