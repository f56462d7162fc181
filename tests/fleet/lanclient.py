"""A client on the virtual LAN, driven line by line from the test (runs in the client namespace).

One ``rkserve.Client`` following a DNS-SD browser lives for the whole run, so the test sees
that the same client picks up boards that appear and drops boards that leave. Commands on
stdin, one JSON line answered on stdout for each:

    wait N T     wait up to T s until the browser knows N boards
    send N       N classification requests; how many succeeded, the errors
    boards       the endpoints the client is connected to now
    scrape       each known board's count of answered "cls" requests, from its /metrics
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from typing import Any, Dict

import numpy as np

from rkserve.client import Client
from rkserve.discovery import Browser
from rkserve.errors import RkserveError

IMAGE = np.zeros((32, 32, 3), np.uint8)
OK_LINE = re.compile(r'^rkserve_requests_total\{code="ok",model="cls"\} ([0-9.e+]+)$', re.M)


def scrape(browser: Browser) -> Dict[str, float]:
    counts = {}
    for board in browser.boards().values():
        url = f"http://{board.metrics_target}/metrics"
        with urllib.request.urlopen(url, timeout=2) as reply:  # a board on the test's LAN
            text = reply.read().decode()
        found = OK_LINE.search(text)
        counts[board.name] = float(found.group(1)) if found else 0.0
    return counts


def send(client: Client, count: int) -> Dict[str, Any]:
    ok, errors = 0, []
    for _ in range(count):
        try:
            client.classify("cls", IMAGE, top_k=1)
            ok += 1
        except RkserveError as exc:
            errors.append(f"{exc.code}: {exc}")
    return {"ok": ok, "errors": errors[:5]}


def main() -> None:
    browser = Browser().start()
    client = Client(discovery=browser, timeout=3.0, retries=2, connect_timeout=3.0)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "wait":
            wanted = int(words[1])
            found = browser.wait_for(lambda b, n=wanted: len(b) >= n, float(words[2]))
            answer: Any = sorted(b.name for b in found.values())
        elif words[0] == "send":
            answer = send(client, int(words[1]))
        elif words[0] == "boards":
            client.health()  # a call applies the browser's latest changes
            answer = client.connected
        elif words[0] == "scrape":
            answer = scrape(browser)
        else:
            answer = {"error": f"unknown command {words[0]}"}
        print(json.dumps(answer), flush=True)
    client.shutdown()
    browser.close()


if __name__ == "__main__":
    main()
