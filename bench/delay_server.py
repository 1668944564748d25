"""A loopback HTTP target with known delays, run as its own process by bench.timing.

`python -m bench.delay_server HEADER_MS BODY_MS BODY_BYTES` listens on a free port of
127.0.0.1, prints the port on stdout, and answers every request on a new connection: the
status line and headers HEADER_MS after the request's end, the body BODY_MS after that, then
closes. A thread per connection and time.sleep keep the delays accurate to ~0.1 ms (an event
loop's timers round to the millisecond). TCP_NODELAY: the body is never held back by Nagle.

`python -m bench.delay_server silent` accepts connections, reads what comes (a request, a TLS
ClientHello) and never answers: a failed transfer's target (a time-out while waiting for the
response, or in the TLS handshake).
"""

from __future__ import annotations

import socket
import socketserver
import sys
import time

MAX_REQUEST_BYTES = 65_536


def serve(header_ms: float, body_ms: float, body_bytes: int) -> None:
    body = b"x" * body_bytes
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + b"Connection: close\r\n\r\n"
    )

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk or len(data) > MAX_REQUEST_BYTES:
                    return
                data += chunk
            time.sleep(header_ms / 1000.0)
            conn.sendall(head)
            time.sleep(body_ms / 1000.0)
            conn.sendall(body)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 128

    with Server(("127.0.0.1", 0), Handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


def serve_silently() -> None:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            conn.settimeout(60)
            try:
                while conn.recv(MAX_REQUEST_BYTES):
                    pass
            except OSError:
                return

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 128

    with Server(("127.0.0.1", 0), Handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:] == ["silent"]:
        serve_silently()
    else:
        serve(float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
