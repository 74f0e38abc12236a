// The messagestore web view: sessions on the left, the selected session's messages on the right,
// live over Server-Sent Events. Everything from the server is put in the page as text
// (textContent), never as HTML.
//
// Consistency: the page lists the session's messages (a snapshot consistent at a revision),
// then subscribes to /api/events from that revision. A whole frame (created, updated) carries
// a message's state; the page keeps, per message, the state with the highest revision and
// ignores older ones. A delta frame carries a change: it applies (MessageStoreDelta.apply, from
// /static/delta.js) only to the page's copy at the delta's base revision; when the copy is at
// another revision, or the delta does not fit it, the page never applies it: it fetches the
// message (GET /api/messages/{id}) and applies the deltas that follow the fetched state. So a
// reload mid-stream shows the stored text and continues from there: nothing lost, nothing
// twice. The browser's EventSource reconnects by itself with Last-Event-ID.
//
// A delta that only appends text to parts the page shows appends it to their nodes (the cost
// of a delta follows the size of the change, not of the message); any other change renders
// the message again. #messages counts, in data attributes, the deltas applied
// (data-deltas-applied), refused (data-deltas-refused) and the messages fetched for want of
// a state a delta applies to (data-messages-fetched).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  sessionId: null,
  messages: new Map(), // id -> message JSON
  order: [], // message ids in creation order
  fetching: new Map(), // id -> deltas that arrived while the message is being fetched
  source: null, // EventSource
  generation: 0, // bumped on every (re)selection; stale async work checks it
  live: false, // the selected session's snapshot is loaded: its count is state.order.length
};
const counts = { applied: 0, refused: 0, fetched: 0 };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data && data.error ? data.error.message : response.statusText;
    throw new Error(message);
  }
  return data;
}

function setStatus(text) {
  $("status").textContent = text;
}

// -- sessions ------------------------------------------------------------------------------

async function loadSessions() {
  let data;
  try {
    data = await api("GET", "/api/sessions");
  } catch (error) {
    setStatus("cannot list sessions: " + error.message);
    return [];
  }
  const list = $("sessions");
  list.replaceChildren();
  const times = sessionTimes(data.sessions);
  for (const session of data.sessions) {
    const title = session.title || "(untitled)";
    const created = new Date(session.created_at);
    // The selected session's count follows its live events; the list may lag behind them.
    const count = session.id === state.sessionId && state.live
      ? state.order.length : session.message_count;
    const item = el("li", {
      "data-id": session.id,
      title: `${title}\ncreated ${created.toLocaleString()}\n${session.id}`,
    },
      el("span", { class: "title", text: title }),
      el("span", { class: "count", text: String(count), title: "messages" }),
      el("time", { class: "when", datetime: session.created_at, text: times.get(session.id) }));
    if (session.id === state.sessionId) item.classList.add("selected");
    item.addEventListener("click", () => selectSession(session.id));
    list.append(item);
  }
  return data.sessions;
}

// When each session was created, short: the time today, else the day and the time; to the
// second where two sessions of the same title would otherwise read alike, and with the start
// of the id where even the second is the same.
function sessionTimes(sessions) {
  const times = new Map();
  const alike = (label) => {
    const seen = new Map();
    for (const session of sessions) {
      const key = session.title + "\u0000" + label(session);
      seen.set(key, (seen.get(key) || 0) + 1);
    }
    return (session) => seen.get(session.title + "\u0000" + label(session)) > 1;
  };
  const minutes = (session) => shortTime(new Date(session.created_at), false);
  const seconds = (session) => shortTime(new Date(session.created_at), true);
  const sameMinute = alike(minutes);
  const sameSecond = alike(seconds);
  for (const session of sessions) {
    let text = sameMinute(session) ? seconds(session) : minutes(session);
    if (sameMinute(session) && sameSecond(session)) text += " · " + session.id.slice(0, 6);
    times.set(session.id, text);
  }
  return times;
}

function shortTime(date, seconds) {
  const now = new Date();
  const time = date.toLocaleTimeString([], seconds
    ? { hour: "numeric", minute: "2-digit", second: "2-digit" }
    : { hour: "numeric", minute: "2-digit" });
  if (date.toDateString() === now.toDateString()) return time;
  const day = date.toLocaleDateString([], date.getFullYear() === now.getFullYear()
    ? { month: "short", day: "numeric" }
    : { year: "numeric", month: "short", day: "numeric" });
  return `${day}, ${time}`;
}

// The selected session's message count, from the messages the page holds (kept current by
// the live events: a created message adds one, a deleted one takes one away).
function showCount() {
  if (!state.sessionId || !state.live) return;
  const count = document.querySelector(`#sessions li[data-id="${CSS.escape(state.sessionId)}"] .count`);
  if (count) count.textContent = String(state.order.length);
}

async function newSession(title) {
  const session = await api("POST", "/api/sessions", { title: title || "New session" });
  await loadSessions();
  await selectSession(session.id);
  return session;
}

async function selectSession(id) {
  const generation = ++state.generation;
  if (state.source) {
    state.source.close();
    state.source = null;
  }
  state.sessionId = id;
  state.live = false;
  state.messages.clear();
  state.fetching.clear();
  state.order = [];
  history.replaceState(null, "", "#s=" + encodeURIComponent(id));
  for (const item of $("sessions").children) {
    item.classList.toggle("selected", item.dataset.id === id);
  }
  $("delete-session").hidden = false;
  let snapshot;
  try {
    const session = await api("GET", "/api/sessions/" + encodeURIComponent(id));
    $("session-title").textContent = session.title || "(untitled)";
    snapshot = await api("GET", "/api/sessions/" + encodeURIComponent(id) + "/messages");
  } catch (error) {
    if (generation === state.generation) setStatus(error.message);
    return;
  }
  if (generation !== state.generation) return;
  $("messages").replaceChildren();
  for (const message of snapshot.messages) apply(message);
  state.live = true;
  showCount();
  renderEmpty();
  subscribe(id, snapshot.revision, generation);
}

function subscribe(id, revision, generation) {
  const url = "/api/events?session_id=" + encodeURIComponent(id) + "&since=" + revision;
  const source = new EventSource(url);
  state.source = source;
  const onMessage = (event) => {
    if (generation !== state.generation) return;
    const data = JSON.parse(event.data);
    if (event.type === "deleted") remove(data.id);
    else if (event.type === "delta") applyDelta(data, generation);
    else apply(data);
  };
  for (const type of ["created", "updated", "delta", "deleted"]) {
    source.addEventListener(type, onMessage);
  }
  source.addEventListener("reset", () => {
    // The stream cannot resume from this revision (data.code: "revision_compacted", it is no
    // longer retained; "revision_from_future", the database never reached it): start again
    // from a fresh snapshot.
    if (generation === state.generation) selectSession(id);
  });
  source.onopen = () => setStatus("live");
  source.onerror = () => {
    if (generation !== state.generation) return;
    if (source.readyState === EventSource.CLOSED) {
      setStatus("disconnected; retrying…");
      setTimeout(() => { if (generation === state.generation) selectSession(id); }, 3000);
    } else {
      setStatus("reconnecting…");
    }
  };
}

// -- messages ------------------------------------------------------------------------------

// A whole state of a message: kept and shown unless the page holds a newer one.
function apply(message) {
  const known = state.messages.get(message.id);
  if (known && known.revision >= message.revision) return; // older or the same state
  show(message, known);
}

function show(message, known) {
  state.messages.set(message.id, message);
  if (!known) {
    state.order.push(message.id);
    showCount();
  }
  render(message);
  // A tool result shows under its call, which may be in an earlier message.
  if (message.role === "tool") {
    for (const part of message.parts) {
      if (part.type !== "tool_result") continue;
      const owner = callOwner(part.data.tool_call_id);
      if (owner) render(owner);
    }
  }
  renderEmpty();
}

// A change of a message: applied to the page's copy when the copy is at the delta's base,
// else the message is fetched (see the top of the file).
function applyDelta(delta, generation) {
  const waiting = state.fetching.get(delta.id);
  if (waiting) {
    waiting.push(delta); // applied after the fetch if it follows the fetched state
    return;
  }
  const known = state.messages.get(delta.id);
  if (known && delta.revision <= known.revision) return; // the page holds that state or newer
  let next;
  try {
    if (!known) throw new Error("no copy of message " + delta.id);
    next = MessageStoreDelta.apply(known, delta); // throws unless known.revision === delta.base
  } catch (error) {
    counts.refused += 1;
    showCounts();
    refetch(delta.id, generation);
    return;
  }
  counts.applied += 1;
  state.messages.set(next.id, next);
  if (!appendInPlace(next, delta)) show(next, known);
  showCounts();
}

// The stored state of a message whose copy a delta could not be applied to. Deltas that arrive
// meanwhile wait, and are applied after it (those it already holds are skipped).
async function refetch(id, generation) {
  state.fetching.set(id, []);
  counts.fetched += 1;
  showCounts();
  let message = null;
  let gone = false;
  try {
    const response = await fetch("/api/messages/" + encodeURIComponent(id));
    if (response.status === 404) gone = true;
    else if (response.ok) message = await response.json();
  } catch (error) {
    // Left as it is: the message's next frame tries again.
  }
  if (generation !== state.generation) return;
  const waiting = state.fetching.get(id) || [];
  state.fetching.delete(id);
  if (gone) {
    remove(id);
    return;
  }
  if (!message) return;
  apply(message);
  for (const delta of waiting) {
    if (state.fetching.has(id)) state.fetching.get(id).push(delta);
    else applyDelta(delta, generation);
  }
}

function showCounts() {
  const container = $("messages");
  container.dataset.deltasApplied = String(counts.applied);
  container.dataset.deltasRefused = String(counts.refused);
  container.dataset.messagesFetched = String(counts.fetched);
}

// Text appended to parts on show, appended to their nodes; false when the change needs the
// message rendered again (parts added or replaced, a field shown changed, a part not shown).
function appendInPlace(message, delta) {
  if (delta.parts || message.role === "tool") return false;
  for (const key of Object.keys(delta.set || {})) {
    if (key !== "updated_at") return false;
  }
  const node = document.querySelector(`article[data-id="${CSS.escape(message.id)}"]`);
  if (!node) return false;
  const targets = [];
  for (const [index, text] of Object.entries(delta.append || {})) {
    const target = node.querySelector(`[data-part="${index}"] [data-grows], [data-part="${index}"][data-grows]`);
    if (!target) return false;
    targets.push([target, text]);
  }
  const container = $("messages");
  const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 40;
  for (const [target, text] of targets) target.append(text);
  if (atBottom) container.scrollTop = container.scrollHeight;
  return true;
}

function remove(id) {
  state.messages.delete(id);
  state.order = state.order.filter((other) => other !== id);
  showCount();
  const node = document.querySelector(`article[data-id="${CSS.escape(id)}"]`);
  if (node) node.remove();
  renderEmpty();
}

function callOwner(callId) {
  for (const id of state.order) {
    const message = state.messages.get(id);
    if (message.parts.some((p) => p.type === "tool_call" && p.data.id === callId)) return message;
  }
  return null;
}

function resultFor(callId) {
  for (const id of state.order) {
    const message = state.messages.get(id);
    for (const part of message.parts) {
      if (part.type === "tool_result" && part.data.tool_call_id === callId) return part.data;
    }
  }
  return null;
}

function render(message) {
  const container = $("messages");
  const old = container.querySelector(`article[data-id="${CSS.escape(message.id)}"]`);
  const openReasoning = old && old.querySelector("details.reasoning[open]") !== null;
  const streaming = message.role === "assistant" && !message.finished;
  const node = el("article", {
    class: `msg role-${message.role}` + (streaming ? " streaming" : ""),
    "data-id": message.id,
    "data-role": message.role,
    "data-finished": String(message.finished),
  });
  const meta = [message.role];
  if (message.model) meta.push(message.model);
  meta.push(new Date(message.created_at).toLocaleTimeString());
  if (streaming) meta.push("streaming…");
  node.append(el("div", { class: "meta", text: meta.join(" · ") }));
  const calls = new Set(message.parts.filter((p) => p.type === "tool_call").map((p) => p.data.id));
  let shown = 0;
  message.parts.forEach((part, index) => {
    const rendered = renderPart(part, message, calls, openReasoning);
    if (rendered) {
      rendered.dataset.part = String(index);
      node.append(rendered);
      shown += 1;
    }
  });
  if (message.role === "tool" && shown === 0) return removeNode(old); // shown under their calls
  const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 40;
  if (old) old.replaceWith(node);
  else container.append(node);
  if (atBottom) container.scrollTop = container.scrollHeight;
}

function removeNode(node) {
  if (node) node.remove();
}

function renderPart(part, message, calls, openReasoning) {
  const data = part.data;
  switch (part.type) {
    case "text":
      return el("div", { class: "text", "data-grows": "", text: data.text });
    case "reasoning": {
      const done = data.finished_at !== null;
      let label = done ? "Reasoning" : "Thinking…";
      if (done && data.started_at) {
        const seconds = (new Date(data.finished_at) - new Date(data.started_at)) / 1000;
        label += ` (${seconds.toFixed(1)} s)`;
      }
      const details = el("details", { class: "reasoning" }, el("summary", { text: label }),
        el("div", { "data-grows": "", text: data.thinking }));
      if (openReasoning) details.open = true;
      return details;
    }
    case "tool_call": {
      const result = resultFor(data.id);
      const box = el("div", { class: "tool" + (result && result.is_error ? " error" : "") },
        el("span", { class: "name", text: "→ " + data.name }),
        el("span", { class: "status", text: data.finished ? "" : "  (input streaming…)" }),
        el("pre", { class: "input", "data-grows": "", text: data.input }));
      if (result) {
        box.append(el("div", { class: "name", text: result.is_error ? "← error" : "← result" }),
          el("pre", { class: "result", text: result.content }));
      }
      return box;
    }
    case "tool_result": {
      if (message.role === "tool" && callOwner(data.tool_call_id) && !calls.has(data.tool_call_id)) {
        return null; // shown under its call
      }
      return el("div", { class: "tool" + (data.is_error ? " error" : "") },
        el("span", { class: "name", text: (data.is_error ? "← error from " : "← result of ") + data.name }),
        el("pre", { class: "result", text: data.content }));
    }
    case "finish": {
      let label = "finished: " + data.reason;
      if (data.message) label += " — " + data.message;
      if (data.details) label += " (" + data.details + ")";
      return el("div", { class: "finish reason-" + data.reason, text: label });
    }
    case "image_url":
      return el("div", { class: "attachment", text: "image: " + data.url });
    case "binary":
      return el("div", { class: "attachment",
        text: `attachment: ${data.path || "(no name)"} (${data.mime_type})` });
    default:
      return el("div", { class: "attachment", text: "(" + part.type + ")" });
  }
}

function renderEmpty() {
  const container = $("messages");
  const empty = container.querySelector(".empty");
  if (state.order.length === 0 && !empty) {
    container.append(el("p", { class: "empty", text: "No messages yet. Say something below." }));
  } else if (state.order.length > 0 && empty) {
    empty.remove();
  }
}

// -- input ---------------------------------------------------------------------------------

async function send(event) {
  event.preventDefault();
  const input = $("input");
  const text = input.value;
  if (!text.trim()) return;
  $("send").disabled = true;
  try {
    if (!state.sessionId) await newSession(text.slice(0, 40));
    await api("POST", "/api/sessions/" + encodeURIComponent(state.sessionId) + "/inputs", { text });
    input.value = "";
  } catch (error) {
    setStatus("not sent: " + error.message);
  } finally {
    $("send").disabled = false;
    input.focus();
  }
}

async function stop() {
  if (!state.sessionId) return;
  try {
    const result = await api("POST", "/api/sessions/" + encodeURIComponent(state.sessionId) + "/stop");
    setStatus(result.stopped ? "stopped" : "nothing to stop");
  } catch (error) {
    setStatus("stop failed: " + error.message);
  }
}

async function deleteSession() {
  if (!state.sessionId || !confirm("Delete this session and its messages?")) return;
  try {
    await api("DELETE", "/api/sessions/" + encodeURIComponent(state.sessionId));
  } catch (error) {
    setStatus("delete failed: " + error.message);
    return;
  }
  state.generation += 1;
  if (state.source) state.source.close();
  state.sessionId = null;
  state.live = false;
  $("messages").replaceChildren();
  $("session-title").textContent = "No session selected";
  $("delete-session").hidden = true;
  await loadSessions();
}

async function start() {
  $("composer").addEventListener("submit", send);
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) send(event);
  });
  $("stop").addEventListener("click", stop);
  $("new-session").addEventListener("click", () => newSession());
  $("delete-session").addEventListener("click", deleteSession);
  const sessions = await loadSessions();
  const wanted = decodeURIComponent((location.hash.match(/^#s=(.+)$/) || [])[1] || "");
  const first = sessions.find((s) => s.id === wanted) || sessions[0];
  if (first) await selectSession(first.id);
  else renderEmpty();
  // New sessions from elsewhere appear within a few seconds.
  setInterval(loadSessions, 5000);
}

start();
