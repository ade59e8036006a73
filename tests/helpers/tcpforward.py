"""Stdio <-> TCP forwarder for an SSH ProxyCommand: `python3 tcpforward.py HOST PORT`.

Bytes read from stdin go to a TCP connection to HOST:PORT and bytes from it to stdout, until both directions end.
Run under `nsenter -t <pid> -n` it carries an SSH session into a network namespace that this machine cannot route
to (a bare host booted with `systemd-nspawn --private-network`). Standard library only, no imports from the tests:
it runs with the system's /usr/bin/python3, outside the test environment.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys


def forward(host: str, port: int) -> int:
    """Shuttle bytes between stdin/stdout and HOST:PORT; returns the exit status (1 when the connect fails)."""
    try:
        conn = socket.create_connection((host, port), timeout=10)
    except OSError as exc:
        print(f"tcpforward: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    conn.settimeout(None)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        _shuttle(conn, stdin, stdout)
    except OSError:  # the other end reset the connection (the host shut down)
        pass
    conn.close()
    return 0


def _shuttle(conn: socket.socket, stdin: int, stdout: int) -> None:
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ)
    selector.register(conn, selectors.EVENT_READ)
    open_ends = 2
    while open_ends:
        for key, _ in selector.select():
            if key.fileobj == stdin:
                data = os.read(stdin, 65536)
                if data:
                    conn.sendall(data)
                    continue
                conn.shutdown(socket.SHUT_WR)
            else:
                data = conn.recv(65536)
                if data:
                    _write_all(stdout, data)
                    continue
                open_ends = 0  # the server closed: nothing more can flow either way
                break
            selector.unregister(key.fileobj)
            open_ends -= 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


if __name__ == "__main__":
    if len(sys.argv) != 3 or not sys.argv[2].isdigit():
        sys.exit("usage: tcpforward.py HOST PORT")
    sys.exit(forward(sys.argv[1], int(sys.argv[2])))
