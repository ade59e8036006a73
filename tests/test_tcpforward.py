"""tests/helpers/tcpforward.py, the stdio<->TCP forwarder that carries SSH into a bare host's own network namespace:
bytes both ways until both ends close, and one line with exit 1 where nothing listens."""

from __future__ import annotations

import socket
import subprocess
import threading

from tests.helpers.barehost import FORWARDER, SYSTEM_PYTHON


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_bytes_go_both_ways_until_both_ends_close() -> None:
    server, thread = _echo_server()
    with server:
        payload = b"ssh-2.0 hello\n" * 20000  # more than one read's worth each way
        run = subprocess.run([SYSTEM_PYTHON, str(FORWARDER), "127.0.0.1", str(server.getsockname()[1])],
                             input=payload, capture_output=True, timeout=30, check=False)
        thread.join(timeout=10)
    assert (run.returncode, run.stdout, run.stderr) == (0, payload.upper(), b"")


def test_nothing_listening_is_one_line_and_exit_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    run = subprocess.run([SYSTEM_PYTHON, str(FORWARDER), "127.0.0.1", str(port)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert run.returncode == 1
    assert run.stderr == f"tcpforward: cannot connect to 127.0.0.1:{port}: [Errno 111] Connection refused\n"
