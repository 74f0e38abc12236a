"""What the HTTP service refuses before a route runs, in process (httpx on the ASGI app): writes
from other sites (the tokenless loopback server and the token's cookie alike), bodies that are
not JSON, numbers too large to convert. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from messagestore import Store
from messagestore.server import create_app
from messagestore.server._guard import LOOPBACK_HOSTS
from tests.server.test_api import RecordingInbound, assert_error, client_for

TOKEN = "s3cret-token"
EVIL = "https://evil.example"
JSON = {"content-type": "application/json"}


@pytest.fixture
async def inbound() -> RecordingInbound:
    return RecordingInbound()


@pytest.fixture
async def client(store: Store, inbound: RecordingInbound) -> AsyncIterator[httpx.AsyncClient]:
    """The tokenless loopback server, as ``messagestore serve`` builds it."""
    app = create_app(store, inbound=inbound, allowed_hosts=LOOPBACK_HOSTS)
    async with client_for(app) as client:
        yield client


# -- cross-site writes -------------------------------------------------------------------------


async def test_a_page_of_another_site_cannot_write(
    client: httpx.AsyncClient, store: Store, inbound: RecordingInbound
) -> None:
    """What a page at evil.example can make a browser send to 127.0.0.1: a simple form post
    (no preflight), or any write with its Origin or ``Sec-Fetch-Site: cross-site``."""
    session = await store.sessions.create("mine")
    attempts = [
        # A cross-site text/plain POST with an empty body: no preflight, nothing to parse.
        ("POST", "/api/sessions", {"origin": EVIL, "content-type": "text/plain"}, b""),
        ("POST", "/api/sessions", {"origin": EVIL, **JSON}, b"{}"),
        ("POST", "/api/sessions", {"origin": "null", **JSON}, b"{}"),  # sandboxed, file://
        ("POST", "/api/sessions", {"sec-fetch-site": "cross-site", **JSON}, b"{}"),
        ("POST", f"/api/sessions/{session.id}/stop", {"origin": EVIL}, b""),
        ("POST", f"/api/sessions/{session.id}/stop", {"sec-fetch-site": "cross-site"}, b""),
        ("POST", f"/api/sessions/{session.id}/inputs", {"origin": EVIL, **JSON}, b'{"text":"x"}'),
        ("DELETE", f"/api/sessions/{session.id}", {"origin": EVIL}, b""),
        # Another port of the same host is another origin (though the same site).
        ("POST", "/api/sessions", {"origin": "http://127.0.0.1:3000", **JSON}, b"{}"),
        ("POST", "/api/sessions", {"origin": "https://127.0.0.1", **JSON}, b"{}"),
    ]
    for method, path, headers, body in attempts:
        response = await client.request(method, path, headers=headers, content=body)
        error = assert_error(response, 403, "forbidden")
        assert "cross-site" in error["message"], (method, path, headers)
    assert [s.id for s in await store.sessions.list()] == [session.id]
    assert inbound.submitted == [] and inbound.stopped == []


async def test_reads_from_another_origin_are_refused_too(client: httpx.AsyncClient) -> None:
    # A browser sends Origin on a cross-origin fetch or EventSource, never on a same-origin
    # GET: such a read could not be used by the page anyway, and must not hold a stream.
    async with asyncio.timeout(10):  # were it served, the stream would never end
        events = await client.get("/api/events", headers={"origin": EVIL})
    assert_error(events, 403, "forbidden")
    assert_error(await client.get("/api/sessions", headers={"origin": EVIL}), 403, "forbidden")
    # A link from another site opens the page (navigation sends no Origin).
    page = await client.get("/", headers={"sec-fetch-site": "cross-site"})
    assert page.status_code == 200


async def test_the_page_itself_and_other_clients_may_write(
    client: httpx.AsyncClient, store: Store, inbound: RecordingInbound
) -> None:
    # The client is addressed as http://127.0.0.1 (its Host): that is the server's own origin.
    for headers in (
        {"origin": "http://127.0.0.1", "sec-fetch-site": "same-origin"},
        {"origin": "http://127.0.0.1:80"},
        {"sec-fetch-site": "same-site"},
        {"sec-fetch-site": "none"},  # typed into the address bar, a bookmark
        {},  # not a browser: curl, a script
    ):
        created = await client.post("/api/sessions", headers={**headers, **JSON}, content=b"{}")
        assert created.status_code == 201, (headers, created.text)
        session_id = created.json()["id"]
        stopped = await client.post(f"/api/sessions/{session_id}/stop", headers=headers)
        assert stopped.status_code == 200, (headers, stopped.text)
        deleted = await client.delete(f"/api/sessions/{session_id}", headers=headers)
        assert deleted.status_code == 204, (headers, deleted.text)
    own = {"origin": "http://localhost:8000", "host": "localhost:8000", **JSON}
    assert (await client.post("/api/sessions", headers=own, content=b"{}")).status_code == 201
    assert len(inbound.stopped) == 5


async def test_an_allowed_cors_origin_may_write(store: Store) -> None:
    app = create_app(store, cors_origins=["http://localhost:3000"], allowed_hosts=LOOPBACK_HOSTS)
    async with client_for(app) as client:
        allowed = {"origin": "http://localhost:3000", "sec-fetch-site": "cross-site", **JSON}
        created = await client.post("/api/sessions", headers=allowed, content=b"{}")
        assert created.status_code == 201, created.text
        other = {"origin": "http://localhost:3001", **JSON}
        assert_error(await client.post("/api/sessions", headers=other), 403, "forbidden")
    async with client_for(create_app(store, cors_origins=["*"])) as client:
        anyone = {"origin": EVIL, "sec-fetch-site": "cross-site", **JSON}
        assert (await client.post("/api/sessions", headers=anyone)).status_code == 201


async def test_the_token_cookie_is_no_door_for_other_origins(store: Store) -> None:
    """The cookie is same-site, so a page on another port of the same host still sends it:
    a write that carries only the cookie must come from the server's own origin. The bearer
    header cannot be sent by another origin's page without a preflight that is refused."""
    async with client_for(create_app(store, token=TOKEN)) as client:
        page = await client.get("/?token=" + TOKEN)
        assert page.status_code == 200  # the client keeps the cookie from here on
        cookie_attack = {"origin": "http://127.0.0.1:3000", "sec-fetch-site": "same-site", **JSON}
        assert_error(
            await client.post("/api/sessions", headers=cookie_attack, content=b"{}"),
            403,
            "forbidden",
        )
        same = {"origin": "http://127.0.0.1", "sec-fetch-site": "same-origin", **JSON}
        assert (await client.post("/api/sessions", headers=same, content=b"{}")).status_code == 201
        bearer = {"authorization": f"Bearer {TOKEN}", "origin": EVIL, **JSON}
        assert (
            await client.post("/api/sessions", headers=bearer, content=b"{}")
        ).status_code == 201
        client.cookies.clear()
        no_cookie = {"origin": "http://127.0.0.1", **JSON}
        assert_error(await client.post("/api/sessions", headers=no_cookie), 401, "unauthorized")
    assert len(await store.sessions.list()) == 2


# -- content types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b""),
        ("text/plain", b'{"title": "x"}'),
        ("application/x-www-form-urlencoded", b"title=x"),
        ("multipart/form-data; boundary=b", b"--b--\r\n"),
        (None, b'{"title": "x"}'),  # a body without a type
        (None, b""),  # the route takes a body: its type is required even when empty
    ],
)
async def test_create_takes_only_json(
    client: httpx.AsyncClient, store: Store, content_type: str | None, body: bytes
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = await client.post("/api/sessions", headers=headers, content=body)
    error = assert_error(response, 415, "unsupported_media")
    assert "application/json" in error["message"]
    assert await store.sessions.list() == []


async def test_a_route_without_a_body_takes_none_or_json(
    client: httpx.AsyncClient, store: Store, inbound: RecordingInbound
) -> None:
    session = await store.sessions.create("s")
    stop = f"/api/sessions/{session.id}/stop"
    assert (await client.post(stop)).status_code == 200  # no body, no type: the web page
    assert (await client.post(stop, json={})).status_code == 200
    assert (await client.post(stop, headers=JSON)).status_code == 200
    for headers, body in [
        ({"content-type": "text/plain"}, b""),
        ({"content-type": "application/x-www-form-urlencoded"}, b""),
        ({}, b"x"),
    ]:
        response = await client.post(stop, headers=headers, content=body)
        assert_error(response, 415, "unsupported_media")
    assert_error(await client.post(stop, json={"now": True}), 422, "invalid")
    deleting = await client.delete(
        f"/api/sessions/{session.id}", headers={"content-type": "text/plain"}
    )
    assert_error(deleting, 415, "unsupported_media")
    assert len(inbound.stopped) == 3
    assert [s.id for s in await store.sessions.list()] == [session.id]


# -- numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"title": ' + b"9" * 5000 + b"}", "'title'"),
        (b'{"title": -' + b"9" * 5000 + b"}", "'title'"),
        (b'{"title": 1e999999999}', "'title'"),
        (b'{"title": -1.5e400}', "'title'"),
        (b'{"title": NaN}', "'title'"),
        (b'{"title": Infinity}', "'title'"),
    ],
)
async def test_numbers_too_large_to_convert_are_422(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, body: bytes, named: str
) -> None:
    with caplog.at_level(logging.ERROR, logger="messagestore.server"):
        response = await client.post("/api/sessions", headers=JSON, content=body)
    error = assert_error(response, 422, "invalid")
    assert named in error["message"]
    assert len(error["message"]) < 300  # the number is not echoed whole
    assert caplog.records == []  # not a server bug


async def test_a_number_deep_in_metadata_is_named_by_its_path(
    client: httpx.AsyncClient, store: Store, inbound: RecordingInbound
) -> None:
    session = await store.sessions.create("s")
    body = b'{"text": "hi", "metadata": {"a": [1, {"b": ' + b"7" * 4500 + b"}]}}"
    response = await client.post(f"/api/sessions/{session.id}/inputs", headers=JSON, content=body)
    error = assert_error(response, 422, "invalid")
    assert "'metadata'.a[1].b" in error["message"]
    ok = b'{"text": "hi", "metadata": {"n": ' + b"7" * 4000 + b', "f": 1e308}}'
    response = await client.post(f"/api/sessions/{session.id}/inputs", headers=JSON, content=ok)
    assert response.status_code == 202, response.text
    assert inbound.submitted[0][3] == {"n": int("7" * 4000), "f": 1e308}
