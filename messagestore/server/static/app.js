// The messagestore web view: sessions on the left, the selected session's messages on the right,
// live over Server-Sent Events. Everything from the server is put in the page as text
// (textContent), never as HTML.
//
// Consistency: the page lists the session's messages (a snapshot consistent at a revision),
// then subscribes to /api/events from that revision. Each event carries a message's whole
// state; the page keeps, per message, the state with the highest revision and ignores older
// ones. So a reload mid-stream shows the stored text and continues from there: nothing lost,
// nothing twice. The browser's EventSource reconnects by itself with Last-Event-ID.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  sessionId: null,
  messages: new Map(), // id -> message JSON
  order: [], // message ids in creation order
  source: null, // EventSource
  generation: 0, // bumped on every (re)selection; stale async work checks it
  live: false, // the selected session's snapshot is loaded: its count is state.order.length
};

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
    const message = JSON.parse(event.data);
    if (event.type === "deleted") remove(message.id);
    else apply(message);
  };
  for (const type of ["created", "updated", "deleted"]) source.addEventListener(type, onMessage);
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

function apply(message) {
  const known = state.messages.get(message.id);
  if (known && known.revision >= message.revision) return; // older or the same state
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
  for (const part of message.parts) {
    const rendered = renderPart(part, message, calls, openReasoning);
    if (rendered) {
      node.append(rendered);
      shown += 1;
    }
  }
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
      return el("div", { class: "text", text: data.text });
    case "reasoning": {
      const done = data.finished_at !== null;
      let label = done ? "Reasoning" : "Thinking…";
      if (done && data.started_at) {
        const seconds = (new Date(data.finished_at) - new Date(data.started_at)) / 1000;
        label += ` (${seconds.toFixed(1)} s)`;
      }
      const details = el("details", { class: "reasoning" }, el("summary", { text: label }),
        el("div", { text: data.thinking }));
      if (openReasoning) details.open = true;
      return details;
    }
    case "tool_call": {
      const result = resultFor(data.id);
      const box = el("div", { class: "tool" + (result && result.is_error ? " error" : "") },
        el("span", { class: "name", text: "→ " + data.name }),
        el("span", { class: "status", text: data.finished ? "" : "  (input streaming…)" }),
        el("pre", { class: "input", text: data.input }));
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
