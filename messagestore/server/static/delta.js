// Applies a messagestore message delta to a message's JSON (the object GET /api/messages/{id}
// answers). A classic script without dependencies: in a page it defines the global
// MessageStoreDelta; in Node, require() returns the same object.
//
//   const next = MessageStoreDelta.apply(messageJson, deltaJson);
//
// The delta applies only to the copy at its base revision (messageJson.revision === delta.base);
// otherwise, or when the delta does not fit the message, apply throws an Error, and the caller
// drops its copy and waits for (or fetches) a whole state. In order: each "append" entry appends
// its string to the streamed field of a part the base has (data.text of a text part,
// data.thinking of reasoning, data.input of a tool call); each "parts" entry, in ascending index
// order, replaces the part at that index or adds it when the index equals the current length;
// each "set" entry replaces that top-level field; then revision becomes the delta's. Absent keys
// mean unchanged.
//
// The input is never changed. The result is a new object and a new parts array, sharing the
// parts that did not change with the input (and those added with the delta): treat all three
// as read-only.
(function (root) {
  "use strict";

  const GROWING = { text: "text", reasoning: "thinking", tool_call: "input" };
  const PART_TYPES = [
    "text", "reasoning", "image_url", "binary", "tool_call", "tool_result", "finish",
  ];
  const SETTABLE = {
    session_id: "string",
    role: "string",
    model: "string",
    provider: "string",
    created_at: "string",
    updated_at: "string",
    is_summary_message: "boolean",
    finished: "boolean",
  };
  const DELTA_KEYS = ["id", "base", "revision", "append", "parts", "set"];
  const INDEX = /^(0|[1-9][0-9]{0,8})$/;
  const own = (object, key) => Object.prototype.hasOwnProperty.call(object, key);
  const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
  const isRevision = (value) => Number.isSafeInteger(value) && value >= 0;

  function fail(message) {
    throw new Error("message delta: " + message);
  }

  // [index, value] pairs of an "append" or "parts" object, in ascending index order.
  function entries(delta, name) {
    if (!own(delta, name)) return [];
    const object = delta[name];
    if (!isObject(object)) fail(name + " is not an object");
    const out = [];
    for (const key of Object.keys(object)) {
      if (!INDEX.test(key)) fail(name + " key " + JSON.stringify(key) + " is not a part index");
      out.push([Number(key), object[key]]);
    }
    return out.sort((a, b) => a[0] - b[0]);
  }

  function apply(message, delta) {
    if (!isObject(message) || !Array.isArray(message.parts)) fail("the message is not a message");
    if (!isObject(delta)) fail("the delta is not an object");
    for (const key of Object.keys(delta)) {
      if (!DELTA_KEYS.includes(key)) fail("unknown key " + JSON.stringify(key));
    }
    if (typeof delta.id !== "string" || delta.id !== message.id) {
      const names = JSON.stringify(delta.id) + ", not " + JSON.stringify(message.id);
      fail("the delta is for message " + names);
    }
    if (!isRevision(delta.base) || !isRevision(delta.revision)) {
      fail("base or revision is not an integer of at least 0");
    }
    if (message.revision !== delta.base) {
      const at = "; this copy is at revision " + message.revision;
      fail("the delta applies to revision " + delta.base + at);
    }
    const appends = entries(delta, "append");
    const replaced = entries(delta, "parts");
    const parts = message.parts.slice();
    const appended = new Set();
    for (const [index, text] of appends) {
      if (typeof text !== "string") fail("append " + index + " is not a string");
      const part = parts[index];
      if (index >= parts.length || !isObject(part) || !isObject(part.data)) {
        fail("append to part " + index + ": the message has " + parts.length + " parts");
      }
      const field = own(GROWING, part.type) ? GROWING[part.type] : undefined;
      if (field === undefined || typeof part.data[field] !== "string") {
        fail("append to part " + index + ": a " + part.type + " part has no streamed field");
      }
      parts[index] = { ...part, data: { ...part.data, [field]: part.data[field] + text } };
      appended.add(index);
    }
    for (const [index, part] of replaced) {
      if (appended.has(index)) fail("part " + index + " is both appended to and replaced");
      if (!isObject(part) || !PART_TYPES.includes(part.type) || !isObject(part.data)) {
        fail("part " + index + " is not a part object");
      }
      if (index > parts.length) {
        fail("part " + index + " would be added past the end (" + parts.length + " parts)");
      }
      parts[index] = part;
    }
    const result = { ...message, parts: parts };
    if (own(delta, "set")) {
      if (!isObject(delta.set)) fail("set is not an object");
      for (const key of Object.keys(delta.set)) {
        if (!own(SETTABLE, key)) fail("set: " + JSON.stringify(key) + " is not a settable field");
        if (typeof delta.set[key] !== SETTABLE[key]) {
          fail("set: " + key + " is not a " + SETTABLE[key]);
        }
        result[key] = delta.set[key];
      }
    }
    const finishes = parts.some((part) => isObject(part) && part.type === "finish");
    if (typeof result.finished === "boolean" && result.finished !== finishes) {
      const held = finishes ? "a finish" : "no finish";
      fail("finished would be " + result.finished + " but the parts include " + held);
    }
    result.revision = delta.revision;
    return result;
  }

  const api = Object.freeze({ apply: apply });
  if (typeof module === "object" && module !== null && module.exports) module.exports = api;
  else root.MessageStoreDelta = api;
})(typeof globalThis !== "undefined" ? globalThis : this);
