#!/usr/bin/env python3
"""A client for deploy/smoke-local-cluster.sh: talks to the local cluster through nginx.

    smoke_client.py chat  BASE_URL STATE_DIR   # room, 3 sockets, a message, its history
    smoke_client.py churn BASE_URL COUNT       # COUNT new sockets must all be upgraded
    smoke_client.py hold  URL...               # one socket per URL until killed

Tokens come from the environment (ALICE, BOB, CAROL: JWTs minted with
`chatter-gateway token`). Only the standard library: the WebSocket client below is
the few lines of RFC 6455 a text-frame chat needs, so the check needs no package
and is a second, independent client next to gateway/examples/chat.rs.
"""

import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT = 10.0


def fail(message):
    print(f"smoke_client: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


class WebSocket:
    """One client socket: text frames out (masked), frames in; answers pings."""

    def __init__(self, base_url, token):
        url = urllib.parse.urlsplit(base_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws?token={urllib.parse.quote(token)} HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = self.sock.recv(1)
            if not byte:
                fail(f"connection closed during the upgrade: {head!r}")
            head += byte
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        if status_line.split(" ")[1] != "101":
            fail(f"upgrade refused: {status_line}")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        magic = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        expected = base64.b64encode(hashlib.sha1(key.encode() + magic).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            fail("wrong Sec-WebSocket-Accept")

    def _read_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                fail("socket closed mid-frame")
            data += chunk
        return data

    def _send_frame(self, opcode, payload):
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send(self, frame_type, data):
        self._send_frame(0x1, json.dumps({"type": frame_type, "data": data}).encode())

    def recv(self, deadline):
        """The next text frame as JSON, or None once the server closed."""
        while True:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                first, second = self._read_exact(2)
            except socket.timeout:
                fail("no frame before the deadline")
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read_exact(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read_exact(8))
            payload = self._read_exact(length)
            if opcode == 0x1:
                return json.loads(payload)
            if opcode == 0x8:
                return None
            if opcode == 0x9:
                self._send_frame(0xA, payload)

    def expect(self, frame_type, predicate=lambda data: True):
        """Reads frames until one of `frame_type` matches `predicate`."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            frame = self.recv(deadline)
            if frame is None:
                fail(f"closed while waiting for {frame_type}")
            if frame.get("type") == frame_type and predicate(frame.get("data", {})):
                return frame["data"]

    def close(self):
        try:
            self._send_frame(0x8, struct.pack("!H", 1000))
        finally:
            self.sock.close()


def http(method, url, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def connections_per_gateway(state_dir):
    """chatter_connections of each gateway, read from its own /metrics (not via nginx)."""
    counts = []
    names = sorted(n for n in os.listdir(f"{state_dir}/pids") if n.startswith("gateway-") and n.endswith(".port"))
    for name in names:
        with open(f"{state_dir}/pids/{name}") as file:
            port = file.read().strip()
        _, text = http("GET", f"http://127.0.0.1:{port}/metrics")
        value = 0
        for line in text.splitlines():
            if line.startswith("chatter_connections "):
                value = int(float(line.split()[1]))
        counts.append(value)
    return counts


def eventually(what, check, seconds=TIMEOUT):
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def chat(base_url, state_dir):
    alice, bob, carol = os.environ["ALICE"], os.environ["BOB"], os.environ["CAROL"]
    # Users are created on first sight; bob connects with a single-use ticket.
    status, body = http("GET", f"{base_url}/ws_token", bob)
    if status != 200:
        fail(f"GET /ws_token: {status} {body}")
    bob_ticket = json.loads(body)["token"]
    http("GET", f"{base_url}/ws_token", carol)
    status, body = http("POST", f"{base_url}/rooms", alice, {"members": ["bob", "carol"], "name": "smoke"})
    if status != 201:
        fail(f"POST /rooms: {status} {body}")
    room = json.loads(body)["id"]

    sockets = {"bob": WebSocket(base_url, bob_ticket), "carol": WebSocket(base_url, carol)}
    # least_conn: each new socket goes to a gateway holding none yet.
    eventually("bob and carol on two gateways", lambda: sorted(connections_per_gateway(state_dir))[-2:] == [1, 1])
    sockets["alice"] = WebSocket(base_url, alice)

    def all_three():
        counts = connections_per_gateway(state_dir)
        return counts if sum(counts) == 3 else None

    print(f"connections per gateway: {eventually('three sockets', all_three)}")

    text = f"hello through nginx {os.getpid()}"
    sockets["alice"].send("SendMessage", {"room_id": room, "message": text, "message_temp_id": "smoke-1"})
    confirmation = sockets["alice"].expect("MessageSentConfirmation")
    if not confirmation.get("confirmed"):
        fail(f"not confirmed: {confirmation}")
    for name in ("bob", "carol", "alice"):
        received = sockets[name].expect("MessageReceived", lambda data: data.get("room_id") == room)
        if received.get("message") != text:
            fail(f"{name} got {received}")
    print("a message from alice reached bob and carol on other gateways")

    def stored():
        status, body = http("GET", f"{base_url}/rooms/{room}/messages", bob)
        return status == 200 and any(m.get("message") == text for m in json.loads(body)["messages"])

    eventually("the message in Postgres (history)", stored, seconds=30)
    print("the message is in the room's history (stored by a worker)")
    for socket_ in sockets.values():
        socket_.close()


def churn(base_url, count):
    """Opens `count` new sockets one after another; each must be upgraded and answer."""
    token = os.environ["ALICE"]
    for _ in range(count):
        ws = WebSocket(base_url, token)
        ws.send("Ping", {})
        ws.expect("Pong")
        ws.close()
    print(f"{count} new sockets upgraded and answered")


def hold(urls):
    """Holds one socket on each URL (gateways, directly) until killed, so that a
    draining gateway has a socket to close and the load balancer sees ties."""
    token = os.environ["ALICE"]
    sockets = [WebSocket(url, token) for url in urls]
    print(f"holding {len(sockets)} sockets", flush=True)
    time.sleep(120)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "chat":
        chat(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "churn":
        churn(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "hold":
        hold(sys.argv[2:])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main()
