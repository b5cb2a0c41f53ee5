"""Baseline for bench/heartbeats.py: a plain FastAPI app in uvicorn doing the same dict update."""

from __future__ import annotations

import sys
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

app = FastAPI()
last_seen: dict[str, float] = {}


@app.post("/inventory/heartbeat")
async def heartbeat(request: Request) -> dict[str, Any]:
    body = await request.json()
    beats = body["heartbeats"] if "heartbeats" in body else [body]
    now = time.monotonic()
    for b in beats:
        last_seen[b["node_id"]] = now
    return {"ok": True}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
