"""A fake PostgreSQL server on loopback that records what clients send, then refuses them.

It speaks just enough of the wire protocol for libpq (psycopg) to send its
startup packet and, when asked for a cleartext password, the password itself.
Each connection is recorded as `Seen(params, password)` and then refused with
"password authentication failed", so no test ever gets a working session here.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


@dataclass
class Seen:
    params: dict[str, str] = field(default_factory=dict)
    password: str | None = None


class FakePostgres:
    """`with FakePostgres() as pg:` listens on 127.0.0.1:`pg.port`; `pg.seen` lists clients.

    `FakePostgres("127.0.0.2")` listens on another loopback address: a second "host".
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.seen: list[Seen] = []
        self.raw = bytearray()  # every byte any client sent
        self.host = host  # any 127.x.y.z: Linux routes all of 127/8 to loopback
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((host, port))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> FakePostgres:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        seen = Seen()
        with self._lock:
            self.seen.append(seen)
        try:
            with conn:
                conn.settimeout(10)
                while True:  # SSL or GSS encryption requests first: always "no"
                    body = self._read_startup(conn)
                    code = struct.unpack("!I", body[:4])[0]
                    if code in (SSL_REQUEST, GSSENC_REQUEST):
                        conn.sendall(b"N")
                        continue
                    break
                parts = body[4:].split(b"\0")
                seen.params = {
                    parts[i].decode(): parts[i + 1].decode()
                    for i in range(0, len(parts) - 1, 2)
                    if parts[i]
                }
                conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
                kind = self._recv(conn, 1)
                length = struct.unpack("!I", self._recv(conn, 4))[0]
                payload = self._recv(conn, length - 4)
                if kind == b"p":
                    seen.password = payload.rstrip(b"\0").decode("utf-8", "replace")
                fields = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0"
                conn.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)
        except (OSError, struct.error, IndexError):
            return

    def _read_startup(self, conn: socket.socket) -> bytes:
        length = struct.unpack("!I", self._recv(conn, 4))[0]
        return self._recv(conn, length - 4)

    def _recv(self, conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise OSError("client closed")
            data += chunk
        with self._lock:
            self.raw += data
        return data
