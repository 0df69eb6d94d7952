"""The herald chart's `helm test`: readiness, then one publish-and-subscribe.

Python standard library only, so any image with python3 runs it. Settings come
from the environment the test pod sets:

  HERALD_URL              base URL of the Service, e.g. http://herald.notify.svc:8000
  HERALD_TEST_AUTH        "true" when Herald checks tokens
  HERALD_TEST_TOKEN       a token to use as is (tests.tokenSecret), or
  HERALD_JWT_SECRET       the HMAC secret to mint a token with, and
  HERALD_TEST_ALGORITHM   HS256, HS384 or HS512
  HERALD_TEST_AUDIENCE    `aud` claim, when config.auth.audience is set
  HERALD_TEST_ISSUER      `iss` claim, when config.auth.issuer is set
  HERALD_TEST_TIMEOUT_SECS  bound on the whole test

Steps: GET /readyz until 200; open an SSE stream on a fresh channel under
helm-test/; publish one event; read the stream until that event arrives with
the id the publish returned. A minted token lives 5 minutes and may only
subscribe and publish on that channel. Exit 0 on success, 1 with a reason.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import sys
import time
import urllib.parse

HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def fail(message):
    print(f"helm test: FAIL: {message}", flush=True)
    sys.exit(1)


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def mint(secret, algorithm, channel):
    """An HS JWT with Herald's claims: rights on `channel` only."""
    if algorithm not in HASHES:
        fail(f"cannot mint a {algorithm} token; set tests.tokenSecret")
    now = int(time.time())
    claims = {
        "sub": "helm-test",
        "iat": now,
        "exp": now + 300,
        "herald": {"subscribe": [channel], "publish": [channel]},
    }
    if os.environ.get("HERALD_TEST_AUDIENCE"):
        claims["aud"] = os.environ["HERALD_TEST_AUDIENCE"]
    if os.environ.get("HERALD_TEST_ISSUER"):
        claims["iss"] = os.environ["HERALD_TEST_ISSUER"]
    header = {"alg": algorithm, "typ": "JWT"}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    mac = hmac.new(secret.encode(), signing_input.encode(), HASHES[algorithm]).digest()
    return signing_input + "." + b64url(mac)


class Target:
    def __init__(self, url, deadline):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            fail(f"HERALD_URL must be http://host:port, not {url!r}")
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.deadline = deadline

    def left(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            fail("timed out")
        return left

    def connect(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.left())


def wait_ready(target):
    last = "no answer"
    while True:
        try:
            conn = target.connect()
            conn.request("GET", "/readyz")
            res = conn.getresponse()
            body = res.read(4096).decode(errors="replace")
            conn.close()
            if res.status == 200:
                print(f"helm test: /readyz 200 {body.strip()}", flush=True)
                return
            last = f"{res.status} {body.strip()}"
        except OSError as err:
            last = str(err)
        if target.deadline - time.monotonic() < 1:
            fail(f"/readyz never answered 200: {last}")
        time.sleep(1)


def main():
    timeout = float(os.environ.get("HERALD_TEST_TIMEOUT_SECS", "60"))
    target = Target(os.environ.get("HERALD_URL", ""), time.monotonic() + timeout)
    wait_ready(target)

    channel = "helm-test/" + secrets.token_hex(8)
    headers = {}
    if os.environ.get("HERALD_TEST_AUTH") == "true":
        token = os.environ.get("HERALD_TEST_TOKEN")
        if not token:
            secret = os.environ.get("HERALD_JWT_SECRET")
            if not secret:
                fail("auth is on but neither HERALD_TEST_TOKEN nor HERALD_JWT_SECRET is set")
            token = mint(secret, os.environ.get("HERALD_TEST_ALGORITHM", "HS256"), channel)
        headers["Authorization"] = "Bearer " + token

    stream = target.connect()
    stream.request(
        "GET",
        "/events?channel=" + urllib.parse.quote(channel, safe=""),
        headers={**headers, "Accept": "text/event-stream"},
    )
    res = stream.getresponse()
    if res.status != 200:
        fail(f"subscribe: {res.status} {res.read(4096).decode(errors='replace').strip()}")
    # The stream opens with a retry: hint; once it is read, the subscription
    # is live and a publish must reach it.
    while True:
        line = res.readline()
        if not line:
            fail("the stream closed before its first frame")
        if line.startswith(b"retry:"):
            break

    nonce = secrets.token_hex(8)
    body = json.dumps({"data": {"helm_test": nonce}}).encode()
    conn = target.connect()
    conn.request(
        "POST",
        "/channels/" + channel + "/events",
        body=body,
        headers={**headers, "Content-Type": "application/json"},
    )
    reply = conn.getresponse()
    text = reply.read(4096).decode(errors="replace")
    conn.close()
    if reply.status != 202:
        fail(f"publish: {reply.status} {text.strip()}")
    event_id = json.loads(text)["id"]

    # One SSE frame: id, event and data lines, then a blank line. Every read
    # is bounded by the socket timeout set at connect (the time left then);
    # heartbeats keep lines coming, so the deadline is checked per line.
    frame = {}
    while True:
        target.left()
        line = res.readline()
        if not line:
            fail(f"the stream closed before event {event_id} arrived")
        line = line.rstrip(b"\r\n").decode(errors="replace")
        if line:
            field, _, value = line.partition(":")
            frame[field] = value[1:] if value.startswith(" ") else value
            continue
        if frame.get("id") == event_id:
            data = json.loads(frame.get("data", "null"))
            if data != {"helm_test": nonce}:
                fail(f"event {event_id} carries {data!r}, not the published data")
            print(f"helm test: event {event_id} published and received on {channel}", flush=True)
            return
        frame = {}


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, KeyError, http.client.HTTPException) as err:
        fail(f"{type(err).__name__}: {err}")
