// Applies message deltas with the web page's applier (messagestore/server/static/delta.js), for
// tests/store/test_message_delta.py.
//
// usage: node delta_check.cjs DELTA_JS CASES_JSON
//   CASES_JSON holds [{"message": ..., "delta": ...}, ...]; prints one JSON array with, per case,
//   {"result": <new message JSON>} or {"error": "<message>"}, and "mutated": true when apply
//   changed its message or delta.
// usage: node delta_check.cjs DELTA_JS --classic
//   runs delta.js as a page would (a classic script, no module object) and prints "ok" when it
//   defined the global MessageStoreDelta.apply.
"use strict";
const fs = require("fs");
const path = require("path");
const vm = require("vm");

const script = path.resolve(process.argv[2]);

if (process.argv[3] === "--classic") {
  const page = vm.createContext({});
  vm.runInContext(fs.readFileSync(script, "utf8"), page, { filename: script });
  const api = page.MessageStoreDelta;
  if (!api || typeof api.apply !== "function") throw new Error("no global MessageStoreDelta");
  process.stdout.write("ok");
} else {
  const { apply } = require(script);
  const cases = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
  const out = cases.map(({ message, delta }) => {
    const before = JSON.stringify([message, delta]);
    let entry;
    try {
      entry = { result: apply(message, delta) };
    } catch (error) {
      if (!(error instanceof Error)) throw error;
      entry = { error: error.message };
    }
    entry.mutated = JSON.stringify([message, delta]) !== before;
    return entry;
  });
  process.stdout.write(JSON.stringify(out));
}
