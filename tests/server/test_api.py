"""The HTTP service's REST routes and errors, in process (httpx on the ASGI app), on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from messagestore import FinishReason, Role, Store, ToolCall, ToolResult
from messagestore._cli._inspect import export_json
from messagestore.server import Accepted, create_app
from messagestore.testing import break_loop


class RecordingInbound:
    """An ``Inbound`` that records what the routes hand it."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str, str | None, Mapping[str, Any] | None]] = []
        self.stopped: list[str] = []
        self.fail: BaseException | None = None

    async def submit(
        self,
        session_id: str,
        text: str,
        *,
        key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Accepted:
        if self.fail is not None:
            raise self.fail
        self.submitted.append((session_id, text, key, metadata))
        return Accepted(f"in-{len(self.submitted)}", session_id, False, datetime.now(UTC))

    async def stop(self, session_id: str) -> bool:
        self.stopped.append(session_id)
        return len(self.stopped) == 1


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(store)) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"status", "code", "message"}
    assert body["error"]["status"] == status
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


# -- sessions --------------------------------------------------------------------------------


async def test_session_lifecycle(client: httpx.AsyncClient, store: Store) -> None:
    created = await client.post("/api/sessions", json={"title": "first"})
    assert created.status_code == 201
    session = created.json()
    assert session["title"] == "first" and session["message_count"] == 0
    assert session["revision"] > 0
    assert (await client.get(f"/api/sessions/{session['id']}")).json() == session
    json_type = {"content-type": "application/json"}
    empty = await client.post("/api/sessions", headers=json_type)  # no body: an untitled one
    assert empty.status_code == 201 and empty.json()["title"] == ""
    listed = (await client.get("/api/sessions")).json()["sessions"]
    assert [s["id"] for s in listed] == [empty.json()["id"], session["id"]]  # newest first

    deleted = await client.delete(f"/api/sessions/{session['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert_error(await client.get(f"/api/sessions/{session['id']}"), 404, "not_found")
    assert_error(await client.delete(f"/api/sessions/{session['id']}"), 404, "not_found")
    assert [s.id for s in await store.sessions.list()] == [empty.json()["id"]]


async def test_child_session_needs_its_parent(client: httpx.AsyncClient) -> None:
    error = assert_error(
        await client.post("/api/sessions", json={"parent_session_id": "nope"}), 404, "not_found"
    )
    assert "nope" in error["message"]
    parent = (await client.post("/api/sessions", json={"title": "p"})).json()
    child = await client.post(
        "/api/sessions", json={"title": "c", "parent_session_id": parent["id"]}
    )
    assert child.status_code == 201 and child.json()["parent_session_id"] == parent["id"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "names"),
    [
        (b"{not json", {"content-type": "application/json"}, 422, "not valid JSON"),
        (b"[1, 2]", {"content-type": "application/json"}, 422, "JSON object"),
        (b'{"title": 5}', {"content-type": "application/json"}, 422, "'title'"),
        (b'{"title": "x", "owner": 1}', {"content-type": "application/json"}, 422, "'owner'"),
        (b'{"title": "a\\u0000b"}', {"content-type": "application/json"}, 422, "NUL"),
        (b'{"title": "x"}', {"content-type": "text/plain"}, 415, "application/json"),
        (b"\xff\xfe", {"content-type": "application/json"}, 422, "not valid JSON"),
    ],
)
async def test_bad_session_bodies(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str], status: int, names: str
) -> None:
    code = {415: "unsupported_media", 422: "invalid"}[status]
    error = assert_error(
        await client.post("/api/sessions", content=body, headers=headers), status, code
    )
    assert names in error["message"]


# -- messages --------------------------------------------------------------------------------


async def test_messages_have_the_export_form(client: httpx.AsyncClient, store: Store) -> None:
    session = await store.sessions.create("chat")
    user = await store.messages.create(session.id, role=Role.USER)
    user.append_text("<script>alert(1)</script>\x00 and ünïcode")
    await store.messages.update(user)
    reply = await store.messages.create(session.id, role=Role.ASSISTANT, model="m")
    reply.append_reasoning("hmm")
    reply.finish_reasoning()
    reply.add_tool_call(ToolCall("c1", "search", '{"q": 1}', finished=True))
    reply.add_binary("a.bin", "application/octet-stream", b"\x00\x01")
    reply.add_finish(FinishReason.TOOL_USE)
    await store.messages.update(reply)
    tool = await store.messages.create(
        session.id, role=Role.TOOL, parts=[ToolResult("c1", "search", "found")]
    )
    await store.messages.flush_all()

    listed = (await client.get(f"/api/sessions/{session.id}/messages")).json()
    assert listed["session_id"] == session.id
    stored = await store.messages.list(session.id)
    exported = json.loads(export_json(await store.sessions.get(session.id), stored))
    for got, want, message in zip(listed["messages"], exported["messages"], stored, strict=True):
        assert got == {**want, "revision": message.revision}
    assert listed["revision"] >= max(m.revision for m in stored)
    one = (await client.get(f"/api/messages/{tool.id}")).json()
    assert one == listed["messages"][2]
    assert listed["messages"][0]["parts"][0]["data"]["text"] == user.text  # verbatim


async def test_missing_and_hostile_ids_are_404(client: httpx.AsyncClient) -> None:
    for path in (
        "/api/messages/nope",
        "/api/messages/%00",
        "/api/messages/" + "x" * 5000,
        "/api/sessions/%F0%9F%92%A9/messages",
        "/api/sessions/%ED%A0%80",  # a lone surrogate's UTF-8 form
        "/api/sessions/a%2Fb",
    ):
        assert_error(await client.get(path), 404, "not_found")


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/nothing"), 404, "not_found")
    error = assert_error(await client.put("/api/sessions"), 405, "method_not_allowed")
    assert "PUT" in error["message"]


# -- limits, auth, hosts, CORS ---------------------------------------------------------------


async def test_body_over_the_limit_is_413(store: Store) -> None:
    async with client_for(create_app(store, max_body=1000)) as client:
        big = json.dumps({"title": "x" * 2000})
        assert_error(
            await client.post(
                "/api/sessions", content=big, headers={"content-type": "application/json"}
            ),
            413,
            "payload_too_large",
        )

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(20):
                yield b"x" * 100

        assert_error(
            await client.post(
                "/api/sessions", content=chunks(), headers={"content-type": "application/json"}
            ),
            413,
            "payload_too_large",
        )
        ok = await client.post("/api/sessions", json={"title": "x" * 900})
        assert ok.status_code == 201
    assert len(await store.sessions.list()) == 1


async def test_a_megabyte_title_is_stored_verbatim(client: httpx.AsyncClient) -> None:
    title = ("<img src=x onerror=alert(1)> ünï 𝄞 " * 30_000)[:1_000_000]
    created = await client.post("/api/sessions", json={"title": title})
    assert created.status_code == 201
    assert (await client.get(f"/api/sessions/{created.json()['id']}")).json()["title"] == title


async def test_token_guards_every_route(store: Store) -> None:
    token = "s3cret-token"
    app = create_app(store, token=token)
    async with client_for(app) as client:
        for method, path in [
            ("GET", "/"),
            ("GET", "/openapi.json"),
            ("GET", "/static/app.js"),
            ("GET", "/api/sessions"),
            ("POST", "/api/sessions"),
            ("GET", "/api/events"),
            ("GET", "/api/messages/x/ui-stream"),
            ("GET", "/no/such/route"),
        ]:
            response = await client.request(method, path)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.get("/api/sessions", headers={"authorization": "Bearer nope-nope"})
        assert_error(wrong, 401, "unauthorized")
        good = await client.get("/api/sessions", headers={"authorization": f"Bearer {token}"})
        assert good.status_code == 200
        # The page takes the token once in its URL and leaves a cookie for what it loads next.
        assert_error(await client.get("/api/sessions?token=" + token), 401, "unauthorized")
        page = await client.get("/?token=" + token)
        assert page.status_code == 200
        assert "HttpOnly" in page.headers["set-cookie"]
        assert "SameSite=Strict" in page.headers["set-cookie"]
        assert (await client.get("/api/sessions")).status_code == 200  # the cookie
    with pytest.raises(ValueError, match="token"):
        create_app(store, token="short")


async def test_loopback_only_host_check(store: Store) -> None:
    from messagestore.server._guard import LOOPBACK_HOSTS

    app = create_app(store, allowed_hosts=LOOPBACK_HOSTS)
    async with client_for(app) as client:
        assert (await client.get("/api/sessions")).status_code == 200
        for host in ("127.0.0.1:8000", "localhost", "[::1]:80", "127.0.0.2:8000"):
            assert (await client.get("/api/sessions", headers={"host": host})).status_code == 200
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example"):
            assert_error(await client.get("/", headers={"host": host}), 403, "forbidden")


async def test_cors_is_off_unless_an_origin_is_given(store: Store) -> None:
    origin = {"origin": "https://app.example"}
    async with client_for(create_app(store)) as client:
        response = await client.get("/api/sessions", headers=origin)
        assert "access-control-allow-origin" not in response.headers
    async with client_for(create_app(store, cors_origins=["https://app.example"])) as client:
        response = await client.get("/api/sessions", headers=origin)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.get("/api/sessions", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# -- input and stop --------------------------------------------------------------------------


async def test_inputs_and_stop_go_to_the_dispatcher(store: Store) -> None:
    inbound = RecordingInbound()
    session = await store.sessions.create("chat")
    async with client_for(create_app(store, inbound=inbound)) as client:
        posted = await client.post(
            f"/api/sessions/{session.id}/inputs",
            json={"text": "hello\x00<b>", "key": "k1", "metadata": {"from": "web"}},
        )
        assert posted.status_code == 202
        body = posted.json()
        assert body["input_id"] == "in-1" and body["session_id"] == session.id
        assert body["duplicate"] is False and body["submitted_at"]
        assert inbound.submitted == [(session.id, "hello\x00<b>", "k1", {"from": "web"})]

        assert (await client.post(f"/api/sessions/{session.id}/stop")).json() == {"stopped": True}
        assert (await client.post(f"/api/sessions/{session.id}/stop")).json() == {"stopped": False}

        assert_error(
            await client.post("/api/sessions/nope/inputs", json={"text": "x"}), 404, "not_found"
        )
        assert_error(await client.post("/api/sessions/nope/stop"), 404, "not_found")
        for bad in ({}, {"text": 1}, {"text": "x", "key": 2}, {"text": "x", "metadata": []}):
            assert_error(
                await client.post(f"/api/sessions/{session.id}/inputs", json=bad), 422, "invalid"
            )
        from messagestore import InvalidMessage

        inbound.fail = InvalidMessage("input text is empty (or only whitespace)")
        error = assert_error(
            await client.post(f"/api/sessions/{session.id}/inputs", json={"text": " "}),
            422,
            "invalid",
        )
        assert "empty" in error["message"]
    assert len(inbound.submitted) == 1


async def test_without_a_dispatcher_input_is_503(client: httpx.AsyncClient, store: Store) -> None:
    session = await store.sessions.create("chat")
    assert_error(
        await client.post(f"/api/sessions/{session.id}/inputs", json={"text": "hi"}),
        503,
        "unavailable",
    )
    assert_error(await client.post(f"/api/sessions/{session.id}/stop"), 503, "unavailable")


async def test_a_store_whose_loop_died_answers_writes_with_503(
    client: httpx.AsyncClient, store: Store
) -> None:
    session = await store.sessions.create("kept")
    await break_loop(store, "flusher")
    error = assert_error(
        await client.post("/api/sessions", json={"title": "x"}), 503, "unavailable"
    )
    assert "'flusher'" in error["message"]
    assert (await client.get(f"/api/sessions/{session.id}")).status_code == 200  # reads go on


# -- the page and the document ---------------------------------------------------------------


async def test_page_and_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert '<script src="/static/app.js"' in page.text
    script = await client.get("/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text  # content is set as text only
    assert (await client.get("/static/app.css")).status_code == 200
    assert_error(await client.get("/static/../pyproject.toml"), 404, "not_found")
    assert_error(await client.get("/static/index.py"), 404, "not_found")


async def test_openapi_lists_every_route(client: httpx.AsyncClient, store: Store) -> None:
    from starlette.routing import Route

    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    app = create_app(store)
    served = set()
    for route in app.routes:
        assert isinstance(route, Route)
        path = route.path
        for method in route.methods or ():
            if method != "HEAD":
                served.add((method, path))
    assert served == documented


async def test_inputs_into_a_real_dispatcher(store: Store) -> None:
    from messagestore.dispatch import Dispatcher, DropPolicy, QueueConfig

    async def never(turn: Any) -> None:  # not started: input is only committed
        raise AssertionError("no turn runs here")

    dispatcher = Dispatcher(store, never, QueueConfig(cap=1, drop=DropPolicy.NEW))
    session = await store.sessions.create("queued")
    async with client_for(create_app(store, dispatcher=dispatcher)) as client:
        url = f"/api/sessions/{session.id}/inputs"
        first = await client.post(url, json={"text": "one", "key": "k"})
        assert first.status_code == 202, first.text
        again = await client.post(url, json={"text": "one", "key": "k"})
        assert again.status_code == 202
        assert again.json()["input_id"] == first.json()["input_id"]  # the same input, once
        assert_error(await client.post(url, json={"text": "two"}), 409, "queue_full")
        assert_error(await client.post(url, json={"text": "   "}), 422, "invalid")
        stopped = await client.post(f"/api/sessions/{session.id}/stop")
        assert stopped.json() == {"stopped": True}  # the pending input was discarded
        assert (await client.post(f"/api/sessions/{session.id}/stop")).json() == {"stopped": False}
        assert (await client.post(url, json={"text": "three"})).status_code == 202
