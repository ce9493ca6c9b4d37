"""A TCP proxy on loopback between cipherdump and an S3 server, to make the server
fail on demand: pass traffic, answer every request with 503 SlowDown, stall (accept and
say nothing), or hold (accept and wait until the mode changes).  Changing the mode
drops every open connection, so a client's pooled connections meet the new mode."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

SLOW_DOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._mode = "pass"
        self._changed = threading.Condition()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.requests_failed = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "503", "stall", "hold")
        with self._changed:
            self._mode = mode
            self._changed.notify_all()
        with self._lock:
            for s in list(self._open):
                _close(s)
            self._open.clear()

    def close(self) -> None:
        self._closed = True
        self.set_mode("pass")
        _close(self._listener)

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._open.add(s)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._changed:
            while self._mode == "hold" and not self._closed:
                self._changed.wait()
            mode = self._mode
        if mode == "503":
            self._answer_503(client)
            return
        if mode == "stall":
            time.sleep(30)  # (dropped sooner by a mode change)
            _close(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        self._track(upstream)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def _answer_503(self, client: socket.socket) -> None:
        try:
            client.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(65536)
                if not chunk:
                    break
                data += chunk
            self.requests_failed += 1
            client.sendall(
                b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                + f"Content-Length: {len(SLOW_DOWN)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + SLOW_DOWN
            )
        except OSError:
            pass
        _close(client)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    _close(source)
    _close(sink)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
