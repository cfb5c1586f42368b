"""Unit tests for minidock.network.proxy: the real shim, started as the engine starts it
(``python -m minidock.network.proxy`` with bound sockets passed as inherited fds), in
front of real servers on 127.0.0.1. No root needed; nothing leaves the loopback."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import random
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from minidock.network.proxy import DONE, Mapping, Proxy, _Flow, _Pipes
from tests.conftest import REPO, wait_for

LOOPBACK = "127.0.0.1"
TIMEOUT = 5.0
MODES = {"splice": [], "copy": ["--copy"]}
# The kernel's TCP states, as the first byte of struct tcp_info gives them.
TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8


# --- servers the proxy forwards to ------------------------------------------------------


@contextlib.contextmanager
def tcp_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A threaded TCP server on 127.0.0.1 running ``handle(conn)`` per connection."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(TIMEOUT)
            handle(self.request)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        request_queue_size = 128  # socketserver's default backlog of 5 overflows at once

    server = Server((LOOPBACK, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def echo(conn: socket.socket) -> None:
    while data := conn.recv(1 << 20):
        conn.sendall(data)


@contextlib.contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Both ends of one TCP connection on 127.0.0.1."""
    with socket.create_server((LOOPBACK, 0)) as listener:
        one = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        other, _ = listener.accept()
    with one, other:
        yield one, other


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def segments_received(sock: socket.socket) -> int:
    """tcpi_segs_in of struct tcp_info (linux/tcp.h): the segments this socket got."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 144)
    return struct.unpack_from("I", info, 140)[0]


def recv_all(sock: socket.socket) -> bytes:
    """Everything until EOF."""
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def udp_echo_server() -> Iterator[int]:
    """Answers each datagram with ``data|SOURCE_PORT``: the address the server saw."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sock.sendto(data + b"|%d" % peer[1], peer)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        sock.close()


# --- the shim ---------------------------------------------------------------------------


class Shim:
    def __init__(self, proc: subprocess.Popen[bytes], ports: list[int], log: Path) -> None:
        self.proc, self.ports, self.log = proc, ports, log

    def connect(self, index: int = 0) -> socket.socket:
        return socket.create_connection((LOOPBACK, self.ports[index]), timeout=TIMEOUT)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            utime, stime = f.read().rpartition(")")[2].split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def sockets(self) -> int:
        """How many sockets the shim holds open."""
        count = 0
        fds = f"/proc/{self.proc.pid}/fd"
        for fd in os.listdir(fds):
            with contextlib.suppress(FileNotFoundError):
                count += os.readlink(f"{fds}/{fd}").startswith("socket:")
        return count


@contextlib.contextmanager
def shim(tmp_path: Path, *maps: tuple[str, int], args: Sequence[str] = ()) -> Iterator[Shim]:
    """Bind one host socket per ``(proto, container_port)`` on 127.0.0.1, start the shim
    with them, and close our copies (the shim then holds the only ones)."""
    bound = []
    for proto, _ in maps:
        if proto == "tcp":
            bound.append(socket.create_server((LOOPBACK, 0)))
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((LOOPBACK, 0))
            bound.append(sock)
    argv = [sys.executable, "-m", "minidock.network.proxy", "--target", LOOPBACK]
    for (proto, port), sock in zip(maps, bound, strict=True):
        argv += ["--map", f"{proto}:{sock.fileno()}:{port}"]
    log = tmp_path / "proxy.log"
    ports = [s.getsockname()[1] for s in bound]
    try:
        with open(log, "wb") as stderr:
            proc = subprocess.Popen(
                [*argv, *args],
                pass_fds=[s.fileno() for s in bound],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=REPO,
            )
    finally:
        for sock in bound:
            sock.close()
    try:
        yield Shim(proc, ports, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# --- TCP --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_tcp_echo_round_trips(tmp_path: Path, mode: str) -> None:
    with (
        tcp_server(echo) as port,
        shim(tmp_path, ("tcp", port), args=MODES[mode]) as proxy,
        proxy.connect() as client,
    ):
        for message in (b"ping", b"x" * 100_000, b"pong"):
            client.sendall(message)
            received = b""
            while len(received) < len(message):
                received += client.recv(1 << 20)
            assert received == message


def test_tcp_64_mib_both_ways_arrive_intact(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(64 << 20)
    with (
        tcp_server(echo) as port,
        shim(tmp_path, ("tcp", port)) as proxy,
        proxy.connect() as client,
    ):

        def send() -> None:
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        digest, size = hashlib.sha256(), 0
        while chunk := client.recv(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        sender.join()
    assert size == len(data)
    assert digest.digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("mode", MODES)
def test_client_half_close_still_gets_the_reply(tmp_path: Path, mode: str) -> None:
    """The client's FIN reaches the server (which only answers after EOF), and the
    server's whole reply still comes back on the half-closed connection."""
    reply = random.Random(1).randbytes(3 << 20)

    def answer_after_eof(conn: socket.socket) -> None:
        request = recv_all(conn)
        conn.sendall(hashlib.sha256(request).digest() + reply)

    request = b"request" * 100_000
    with (
        tcp_server(answer_after_eof) as port,
        shim(tmp_path, ("tcp", port), args=MODES[mode]) as proxy,
        proxy.connect() as client,
    ):
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        answer = recv_all(client)
    assert answer == hashlib.sha256(request).digest() + reply


def test_server_half_close_lets_the_client_go_on_sending(tmp_path: Path) -> None:
    received: queue.Queue[int] = queue.Queue()

    def greet_then_listen(conn: socket.socket) -> None:
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        received.put(len(recv_all(conn)))

    with (
        tcp_server(greet_then_listen) as port,
        shim(tmp_path, ("tcp", port)) as proxy,
        proxy.connect() as client,
    ):
        assert recv_all(client) == b"hello"  # the server's FIN came through
        client.sendall(b"y" * (2 << 20))
        client.shutdown(socket.SHUT_WR)
        assert received.get(timeout=TIMEOUT) == 2 << 20
        assert client.recv(1) == b""


def test_a_stalled_reader_stalls_the_relay_without_spinning(tmp_path: Path) -> None:
    """While the server does not read, buffers fill up and the proxy must sleep (not
    poll a full socket in a loop); when it reads again, every byte arrives."""
    data = b"z" * (64 << 20)
    reading = threading.Event()
    received: queue.Queue[int] = queue.Queue()

    def slow_reader(conn: socket.socket) -> None:
        reading.wait(TIMEOUT)
        received.put(len(recv_all(conn)))

    with (
        tcp_server(slow_reader) as port,
        shim(tmp_path, ("tcp", port)) as proxy,
        proxy.connect() as client,
    ):
        client.settimeout(None)
        sender = threading.Thread(
            target=lambda: (client.sendall(data), client.shutdown(socket.SHUT_WR))
        )
        sender.start()
        try:
            assert wait_for(lambda: proxy.sockets() == 3, timeout=TIMEOUT)  # relaying
            time.sleep(0.3)  # the buffers fill
            before = proxy.cpu_seconds()
            time.sleep(0.5)
            assert proxy.cpu_seconds() - before < 0.05
        finally:
            reading.set()
            sender.join()
        assert received.get(timeout=TIMEOUT) == len(data)


def test_a_client_reset_resets_the_server_side(tmp_path: Path) -> None:
    outcome: queue.Queue[str] = queue.Queue()

    def watch(conn: socket.socket) -> None:
        conn.recv(100)
        outcome.put("data")
        try:
            outcome.put("eof" if recv_all(conn) == b"" else "more data")
        except ConnectionResetError:
            outcome.put("reset")

    with tcp_server(watch) as port, shim(tmp_path, ("tcp", port)) as proxy:
        client = proxy.connect()
        client.sendall(b"hello")
        assert outcome.get(timeout=TIMEOUT) == "data"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # with SO_LINGER 0: a RST, not a FIN
        # A FIN would tell the server the request was complete: it must see a reset.
        assert outcome.get(timeout=TIMEOUT) == "reset"


def test_a_reset_after_a_half_close_resets_the_server_side(tmp_path: Path) -> None:
    """A client that has sent all it had (and its FIN) and then resets while the server
    still works on the answer: the server's connection is reset too, not left open."""
    read_all = threading.Event()
    outcome: queue.Queue[int] = queue.Queue()

    def answer_slowly(conn: socket.socket) -> None:
        recv_all(conn)
        read_all.set()
        wait_for(lambda: tcp_state(conn) != TCP_CLOSE_WAIT, timeout=TIMEOUT)
        outcome.put(tcp_state(conn))

    with tcp_server(answer_slowly) as port, shim(tmp_path, ("tcp", port)) as proxy:
        client = proxy.connect()
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)
        assert read_all.wait(TIMEOUT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        assert outcome.get(timeout=2 * TIMEOUT) == TCP_CLOSE  # a RST came


def test_fifty_concurrent_connections_each_get_their_own_bytes(tmp_path: Path) -> None:
    with tcp_server(echo) as port, shim(tmp_path, ("tcp", port)) as proxy:
        clients = [proxy.connect() for _ in range(50)]
        try:
            messages = [b"client %d;" % i * 2000 for i in range(50)]
            for client, message in zip(clients, messages, strict=True):
                client.sendall(message)
                client.shutdown(socket.SHUT_WR)
            for client, message in zip(clients, messages, strict=True):
                assert recv_all(client) == message
        finally:
            for client in clients:
                client.close()
        # Only the listener is left: every connection's two sockets were closed (the
        # pipes are kept for reuse).
        assert wait_for(lambda: proxy.sockets() == 1, timeout=TIMEOUT)


def test_refused_target_closes_the_client_promptly(tmp_path: Path) -> None:
    # A bound socket that does not listen: connecting to its port is refused (RST).
    with socket.socket() as closed_port:
        closed_port.bind((LOOPBACK, 0))
        port = closed_port.getsockname()[1]
        with shim(tmp_path, ("tcp", port)) as proxy:
            for _ in range(2):  # and the proxy lives on
                start = time.monotonic()
                with proxy.connect() as client:
                    client.sendall(b"anyone?")
                    with contextlib.suppress(ConnectionResetError):  # EOF or RST: both fine
                        assert client.recv(1) == b""
                assert time.monotonic() - start < 2
            assert proxy.proc.poll() is None
    assert f"connect to 127.0.0.1:{port}: Connection refused" in proxy.log.read_text()


def test_splice_refused_falls_back_to_recv_send(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The importable class, in a thread, on a kernel that refuses splice(2)."""

    def no_splice(*args: object) -> int:
        raise OSError(38, "Function not implemented")  # ENOSYS

    monkeypatch.setattr(os, "splice", no_splice)
    data = random.Random(3).randbytes(4 << 20)
    stop_r, stop_w = os.pipe()
    with tcp_server(echo) as port:
        listener = socket.create_server((LOOPBACK, 0))
        address = listener.getsockname()
        proxy = Proxy(LOOPBACK, [Mapping("tcp", listener, port)])
        thread = threading.Thread(target=proxy.serve_until, args=(stop_r,))
        thread.start()
        try:
            for _ in range(2):
                with socket.create_connection(address, timeout=TIMEOUT) as client:
                    sender = threading.Thread(target=client.sendall, args=(data,))
                    sender.start()
                    received = b""
                    while len(received) < len(data):
                        received += client.recv(1 << 20)
                    sender.join()
                    assert received == data
        finally:
            os.write(stop_w, b"x")
            thread.join()
            os.close(stop_r)
            os.close(stop_w)
    assert listener.fileno() == -1  # the proxy closed the socket it was given
    assert capsys.readouterr().err.count("relaying with recv/send") == 1


def test_accepted_sockets_inherit_the_listeners_tcp_nodelay() -> None:
    """The shim sets TCP_NODELAY once, on the listening socket: the kernel clones every
    accepted socket from it, option included."""
    with socket.create_server((LOOPBACK, 0)) as listener:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with socket.create_connection(listener.getsockname(), timeout=TIMEOUT):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_the_last_bytes_and_the_fin_leave_in_one_segment() -> None:
    """A flow that knows its source's FIN is in sends the bytes before it and the FIN in
    one segment: the receiver is woken once, and the hop carries one packet less."""
    with tcp_pair() as (sender, src), tcp_pair() as (dst, receiver):
        sender.sendall(b"request")
        sender.shutdown(socket.SHUT_WR)
        src.setblocking(False)
        dst.setblocking(False)
        flow = _Flow(src, dst, _Pipes(enabled=True))
        flow.fin = True
        before = segments_received(receiver)
        flow.pump()  # loopback: the segments are in the receiver when the calls return
        assert segments_received(receiver) - before == 1
        flow.release()
        assert recv_all(receiver) == b"request"


def test_a_flow_reads_ahead_to_the_fin_through_a_full_pipe() -> None:
    """Once the FIN is known to be in, a flow reads ahead to it before writing; when the
    pipe fills on the way, it writes the pipe out and reads on: every byte arrives, then
    the end of the stream."""
    data = random.Random(5).randbytes(48 * 1024)
    with tcp_pair() as (sender, src), tcp_pair() as (dst, receiver):
        sender.sendall(data)
        sender.shutdown(socket.SHUT_WR)  # loopback: the bytes and the FIN are in src now
        src.setblocking(False)
        dst.setblocking(False)
        flow = _Flow(src, dst, _Pipes(enabled=True))
        fcntl.fcntl(flow.pipe[1], fcntl.F_SETPIPE_SZ, 4096)  # one page: full at once
        flow.fin = True
        flow.pump()
        assert flow.state == DONE
        flow.release()
        assert recv_all(receiver) == data


# --- UDP --------------------------------------------------------------------------------


def udp_exchange(client: socket.socket, port: int, message: bytes) -> tuple[bytes, int]:
    """Send one datagram through the shim; return the echo and the source port the
    server saw."""
    client.sendto(message, (LOOPBACK, port))
    data, peer = client.recvfrom(65535)
    assert peer == (LOOPBACK, port)  # the reply comes from the published port
    echoed, _, source = data.rpartition(b"|")
    return echoed, int(source)


@contextlib.contextmanager
def udp_clients(n: int) -> Iterator[list[socket.socket]]:
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for client in clients:
        client.settimeout(TIMEOUT)
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


def test_udp_each_client_gets_its_own_replies(tmp_path: Path) -> None:
    with (
        udp_echo_server() as port,
        shim(tmp_path, ("udp", port)) as proxy,
        udp_clients(2) as (a, b),
    ):
        host_port = proxy.ports[0]
        a1, a_source = udp_exchange(a, host_port, b"a1")
        b1, b_source = udp_exchange(b, host_port, b"b1")
        a2, a_again = udp_exchange(a, host_port, b"a2")
        assert (a1, b1, a2) == (b"a1", b"b1", b"a2")
        assert a_source == a_again  # one upstream socket per client...
        assert a_source != b_source  # ...and not shared between clients
        assert proxy.sockets() == 3


def test_udp_sessions_are_bounded(tmp_path: Path) -> None:
    with (
        udp_echo_server() as port,
        shim(tmp_path, ("udp", port), args=["--udp-max-clients", "2"]) as proxy,
        udp_clients(3) as clients,
    ):
        for i, client in enumerate(clients):
            assert udp_exchange(client, proxy.ports[0], b"%d" % i)[0] == b"%d" % i
        assert proxy.sockets() == 1 + 2  # the third client's session evicted the first's


def test_udp_idle_sessions_expire(tmp_path: Path) -> None:
    with (
        udp_echo_server() as port,
        shim(tmp_path, ("udp", port), args=["--udp-timeout", "0.3"]) as proxy,
        udp_clients(1) as (client,),
    ):
        assert udp_exchange(client, proxy.ports[0], b"one")[0] == b"one"
        assert proxy.sockets() == 2
        assert wait_for(lambda: proxy.sockets() == 1, timeout=TIMEOUT)
        assert udp_exchange(client, proxy.ports[0], b"two")[0] == b"two"  # a new session
        assert proxy.sockets() == 2


# --- process ----------------------------------------------------------------------------


def test_sigterm_exits_zero_promptly_and_stops_listening(tmp_path: Path) -> None:
    with (
        tcp_server(echo) as port,
        udp_echo_server() as udp_port,
        shim(tmp_path, ("tcp", port), ("udp", udp_port)) as proxy,
    ):
        with proxy.connect() as client:
            client.sendall(b"live")
            assert client.recv(4) == b"live"
            start = time.monotonic()
            proxy.proc.send_signal(signal.SIGTERM)
            assert proxy.proc.wait(timeout=TIMEOUT) == 0
            assert time.monotonic() - start < 2
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(1) == b""  # the live connection was closed
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, proxy.ports[0]), timeout=TIMEOUT).close()
    assert proxy.log.read_text() == ""


def test_rejects_a_map_that_is_not_a_socket() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "minidock.network.proxy", "--target", LOOPBACK]
        + ["--map", "tcp:0:80"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert "'tcp:0:80'" in result.stderr
