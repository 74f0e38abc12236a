"""``messagestore demo --users N``: simulated users talk to a toy agent through the dispatcher.

One short run in ``--json`` mode; its user-side report must add up and agree with the
database: every input has exactly one outcome, every reply is finished, and the turns the
report counts are the user messages stored.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from messagestore import Role, open_store


def test_demo_users_report_adds_up_and_matches_the_database(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    url = f"sqlite+aiosqlite:///{db}"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "messagestore", "demo", "--json", "--url", url),
            *("--duration", "2", "--sessions", "1", "--users", "4", "--window", "0.1"),
            *("--cap", "2", "--drop", "summarize"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verified"]["ok"], report["verified"]["problems"]
    users = report["users"]
    assert users["users"] == 4 and users["mode"] == "collect" and users["drop"] == "summarize"
    assert users["inputs"] > 0
    assert sum(users["outcomes"].values()) == users["inputs"]
    assert users["outcomes"].get("dropped", 0) == users["dropped"]
    assert users["turns"] == users["inputs"] - users["dropped"] - users["inputs_coalesced"]
    latency = users["latency_ms"]
    assert latency["turns"] == users["inputs"] - users["dropped"]
    assert 0 <= latency["p50"] <= latency["p99"] <= latency["max"]

    async def read() -> tuple[int, list[bool]]:
        async with open_store(url) as store:
            listed = [m for s in users["session_ids"] for m in await store.messages.list(s)]
        turns = sum(1 for m in listed if m.role is Role.USER)
        return turns, [m.is_finished for m in listed if m.role is Role.ASSISTANT]

    turns, finished = asyncio.run(read())
    assert turns == users["turns"] and all(finished) and len(finished) == turns
