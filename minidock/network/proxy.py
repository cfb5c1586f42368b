"""The userland port-forwarding shim: ``-p HOST:CONTAINER`` as a relay (docker-proxy's role).

The engine binds every published host port itself (so a taken port fails ``minidock run``
at once) and starts **one** of these processes per container, handing it the bound
sockets as inherited file descriptors::

    python -m minidock.network.proxy --target CONTAINER_IP \\
        --map tcp:FD:CONTAINER_PORT [--map udp:FD:CONTAINER_PORT ...] \\
        [--udp-timeout SECONDS] [--udp-max-clients N] [--copy]

* **TCP**: every accepted connection gets its own connection to ``CONTAINER_IP:PORT``,
  and bytes flow both ways with splice(2): socket → pipe → socket, without ever being
  copied into this process (see ``_Flow``). A half-close (one side's FIN) is passed on
  with shutdown(2); a reset or an error resets both sides.
* **UDP**: each client address gets its own connected UDP socket to the container, so
  the container's replies can be told apart and sent back (``_UdpForwarder``).

It runs until SIGTERM or SIGINT, then closes everything and exits 0. One epoll loop
serves every port, with no threads. It uses ``select.epoll`` itself rather than
``selectors``, for edge-triggered registration (EPOLLET), which ``selectors`` cannot ask
for: see ``Proxy.watch``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

#: F_SETPIPE_SZ asks for this much pipe capacity: 1 MiB is the default
#: /proc/sys/fs/pipe-max-size (a plain pipe holds 64 KiB). One splice(2) moves at most this.
PIPE_SIZE = 1 << 20
#: Buffer of one direction when splice is not available (``--copy``).
COPY_SIZE = 256 * 1024
#: Empty pipes kept for the next connections.
SPARE_PIPES = 64
#: Congestion control of our connections to the container. That hop never leaves the host
#: (a veth pair, or loopback), and there a pacing algorithm — BBR, if the host's default —
#: only costs a timer per burst of packets: a third of the proxy's CPU in a bulk transfer.
#: The client's side keeps the host's choice.
LOCAL_CONGESTION = b"cubic"
#: The largest UDP payload, and how many datagrams one wake-up relays at most.
UDP_MAX = 65535
UDP_BATCH = 64

# SPLICE_F_NONBLOCK makes the pipe end non-blocking (the sockets are already O_NONBLOCK);
# SPLICE_F_MOVE is a hint to move pages rather than copy them.
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# The errors of a kernel (or a seccomp filter) that cannot splice from a socket.
_NO_SPLICE = (errno.EINVAL, errno.ENOSYS, errno.EPERM)
# A connection's sockets are registered edge-triggered (EPOLLET): epoll reports a socket
# when it *becomes* readable or writable, and a flow keeps going until EAGAIN. EPOLLERR and
# EPOLLHUP are always reported, whatever the interest; EPOLLRDHUP (the peer's FIN is in)
# comes with EPOLLIN.
_IN, _OUT, _ET = select.EPOLLIN | select.EPOLLRDHUP, select.EPOLLOUT, select.EPOLLET
_READABLE = select.EPOLLIN | select.EPOLLHUP
_WRITABLE = select.EPOLLOUT | select.EPOLLHUP
_FIN = select.EPOLLRDHUP | select.EPOLLHUP
# SO_LINGER on with a zero timeout: close(2) then sends a RST instead of a FIN.
_RESET = struct.pack("ii", 1, 0)

# What a flow waits for.
WAIT_IN, WAIT_OUT, DONE = 0, 1, 2


class Mapping:
    """One published port: a socket the caller bound on the host, and the container port."""

    __slots__ = ("proto", "sock", "port")

    def __init__(self, proto: str, sock: socket.socket, port: int) -> None:
        self.proto, self.sock, self.port = proto, sock, port


class _Pipes:
    """The pipes that splice(2) goes through, recycled between connections: a new one
    costs pipe2(2), fcntl(F_SETPIPE_SZ) and two close(2) — a good share of the work for
    a short connection. ``enabled`` is False when relaying falls back to recv/send."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.spare: list[tuple[int, int]] = []

    def get(self) -> tuple[int, int]:
        """A spare pipe, or a new one made as large as the kernel allows."""
        if self.spare:
            return self.spare.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Above pipe-max-size, or over the user's pipe quota, the pipe keeps its 64 KiB.
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        return r, w

    def put(self, pipe: tuple[int, int], empty: bool) -> None:
        """Take back a pipe; only an empty one can serve another connection."""
        if empty and self.enabled and len(self.spare) < SPARE_PIPES:
            self.spare.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def disable(self, why: OSError) -> None:
        """splice(2) does not work here: say so once, and close the spare pipes."""
        if self.enabled:
            _log(f"splice: {why.strerror}; relaying with recv/send")
            self.enabled = False
            self.close()

    def close(self) -> None:
        """Close every spare pipe."""
        while self.spare:
            self.put(self.spare.pop(), empty=False)


class _Flow:
    """One direction of a TCP connection: the bytes ``src`` receives, sent on by ``dst``.

    splice(2) needs a pipe at one end, so a pipe sits between the two sockets: splicing
    socket → pipe gives the pipe references to the pages of the received packets, and
    pipe → socket hands the same pages to the sending socket. The data never enters user
    space, and one call moves up to ``PIPE_SIZE`` bytes. The pipe is also the flow's
    buffer: while ``dst`` cannot take more (its send buffer is full), the flow stops
    reading ``src``, the kernel's receive buffer fills and TCP closes the sender's window.
    """

    __slots__ = ("src", "dst", "pipes", "pipe", "pending", "buf", "offset", "state", "fin")

    def __init__(self, src: socket.socket, dst: socket.socket, pipes: _Pipes) -> None:
        self.src, self.dst, self.pipes = src, dst, pipes
        self.pipe = pipes.get() if pipes.enabled else None
        self.buf = None if self.pipe else memoryview(bytearray(COPY_SIZE))
        self.pending = 0  # bytes taken from src, not yet sent by dst
        self.offset = 0  # where they start in ``buf``
        self.state = WAIT_IN
        self.fin = False  # src's FIN has arrived (epoll said so)

    def pump(self) -> None:
        """Relay until ``src`` is empty (WAIT_IN), ``dst`` is full (WAIT_OUT), or ``src``
        has reached end-of-file and the FIN went on (DONE). Edge-triggered epoll reports
        readiness once, so a flow must always run on to one of these three states.

        Once ``src``'s FIN is known to be in, the flow reads on to the end before it
        writes, and gives the last bytes to TCP with SPLICE_F_MORE (MSG_MORE): TCP holds
        them back, and the shutdown(2) that follows puts the FIN in their segment. A
        request or a reply followed by the end of its stream then crosses as one packet,
        not two, and wakes the receiver once."""
        if self.buf is not None:
            self._pump_copy()
            return
        splice, flags = os.splice, _SPLICE_FLAGS
        src, dst = self.src.fileno(), self.dst.fileno()
        r, w = self.pipe
        pending = self.pending
        try:
            while True:
                while pending:  # empty the pipe first
                    pending -= splice(r, dst, pending, None, None, flags)
                pending = splice(src, w, PIPE_SIZE, None, None, flags)
                if not pending:
                    break  # end of file
                if self.fin:
                    try:
                        while more := splice(src, w, PIPE_SIZE, None, None, flags):
                            pending += more
                    except BlockingIOError:  # not src (its FIN is in): the pipe is full
                        continue
                    while pending:
                        pending -= splice(r, dst, pending, None, None, flags | os.SPLICE_F_MORE)
                    break
        except BlockingIOError:  # EAGAIN: src has nothing more, or dst's buffer is full
            self.pending = pending
            self.state = WAIT_OUT if pending else WAIT_IN
            return
        except OSError as e:
            # The pipe is empty, so reading src failed: a kernel that cannot splice it.
            if e.errno not in _NO_SPLICE or pending:
                raise
            self._fall_back(e)
            return
        self._finish()

    def _pump_copy(self) -> None:
        """``pump`` with recv/send through a buffer of our own: two copies per byte."""
        src, dst, buf = self.src, self.dst, self.buf
        pending, offset = self.pending, self.offset
        try:
            while True:
                while pending:
                    sent = dst.send(buf[offset : offset + pending])
                    offset += sent
                    pending -= sent
                pending, offset = src.recv_into(buf), 0
                if not pending:
                    break
        except BlockingIOError:
            self.pending, self.offset = pending, offset
            self.state = WAIT_OUT if pending else WAIT_IN
            return
        self._finish()

    def _fall_back(self, error: OSError) -> None:
        """splice(2) refused to read the socket before anything moved: copy instead, in
        this flow and every later one."""
        self.pipes.disable(error)
        self.release()
        self.pipe, self.buf = None, memoryview(bytearray(COPY_SIZE))
        self._pump_copy()

    def _finish(self) -> None:
        """``src`` sent its FIN and every byte before it went out: shutdown(SHUT_WR) sends
        a FIN on to ``dst`` (with the last bytes, if they were held back for it), which
        can still send in the other direction (half-close)."""
        self.dst.shutdown(socket.SHUT_WR)
        self.state = DONE

    def release(self) -> None:
        """Give the pipe back to the pool (its pages too, if bytes were left in it)."""
        if self.pipe is not None:
            self.pipes.put(self.pipe, empty=not self.pending)
            self.pipe = None


class _Connection:
    """A client connection and ours to the container, relayed by two flows.

    Each socket is registered with epoll once the flows have run, and only for what they
    wait for: the client's socket for EPOLLIN while ``up`` waits for bytes, EPOLLOUT while
    ``down`` waits for room; the upstream socket the other way round. A short request and
    its reply then cost one wake-up each, and no spurious ones.
    """

    __slots__ = ("proxy", "client", "upstream", "target", "up", "down")

    def __init__(
        self,
        proxy: Proxy,
        client: socket.socket,
        upstream: socket.socket,
        target: tuple[str, int],
    ) -> None:
        self.proxy, self.client, self.upstream, self.target = proxy, client, upstream, target
        self.up: _Flow | None = None  # client → container
        self.down: _Flow | None = None  # container → client

    def start(self) -> None:
        """connect(2) to the container without blocking. Over loopback or a veth pair the
        whole handshake usually completes inside the call (SYN, SYN-ACK and ACK are all
        processed before it returns EINPROGRESS), so getpeername(2) checks first, and
        saves a trip through epoll when the connection is already up."""
        upstream = self.upstream
        error = upstream.connect_ex(self.target)
        if error and error != errno.EINPROGRESS:
            self.fail(error)  # an immediate error, e.g. ENETUNREACH
            return
        try:
            upstream.getpeername()
        except OSError:  # ENOTCONN: still connecting (or already refused)
            # Writable once the handshake is over; EPOLLERR if it failed.
            self.proxy.handlers[upstream.fileno()] = self.on_connect
            self.proxy.watch(upstream.fileno(), _OUT)
            return
        self._relay()

    def on_connect(self, events: int) -> None:
        """The non-blocking connect(2) has finished (the socket turned writable) or
        failed; SO_ERROR tells which."""
        error = self.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self.fail(error)
            return
        self._relay()

    def _relay(self) -> None:
        """Both connections are up: start the flows. The client may have sent (and even
        closed) while we connected, so ``up`` runs at once; ``down`` waits for the
        container, whose bytes (if any came already) epoll reports as soon as the
        upstream socket is registered."""
        proxy, client, upstream = self.proxy, self.client, self.upstream
        proxy.handlers[client.fileno()] = self.on_client
        proxy.handlers[upstream.fileno()] = self.on_upstream
        self.up = _Flow(client, upstream, proxy.pipes)
        self.down = _Flow(upstream, client, proxy.pipes)
        self._advance([self.up])

    def fail(self, error: int) -> None:
        """The container could not be reached: log why, and close the client."""
        host, port = self.target
        _log(f"connect to {host}:{port}: {os.strerror(error)}")
        self.close()

    def on_client(self, events: int) -> None:
        """An event on the client's socket: ``up`` reads it, ``down`` writes to it."""
        self._serve(events, self.up, self.down)

    def on_upstream(self, events: int) -> None:
        """An event on the container's socket: ``down`` reads it, ``up`` writes to it."""
        self._serve(events, self.down, self.up)

    def _serve(self, events: int, reading: _Flow, writing: _Flow) -> None:
        """Pump the flows that the event unblocks. EPOLLERR means a reset or another
        fatal error; EPOLLHUP can unblock either flow, and a flow that is not waiting
        ignores the event (edge-triggering may report what it did not ask for)."""
        if events & select.EPOLLERR:
            self.close(reset=True)
            return
        if events & _FIN:
            reading.fin = True
        ready = []
        if events & _READABLE and reading.state == WAIT_IN:
            ready.append(reading)
        if events & _WRITABLE and writing.state == WAIT_OUT:
            ready.append(writing)
        if ready:
            self._advance(ready)

    def _advance(self, flows: list[_Flow]) -> None:
        """Pump ``flows``; close the connection once both directions are done, or else
        watch for what the flows wait for next."""
        try:
            for flow in flows:
                flow.pump()
        except OSError:  # ECONNRESET, EPIPE, ETIMEDOUT...: the stream is broken
            self.close(reset=True)
            return
        up, down = self.up, self.down
        if up.state == DONE and down.state == DONE:
            self.close()
            return
        self.proxy.watch(self.client.fileno(), _interest(up, down))
        self.proxy.watch(self.upstream.fileno(), _interest(down, up))

    def close(self, reset: bool = False) -> None:
        """Close both sockets. With ``reset``, each side gets a RST rather than a FIN, so
        that a peer cannot mistake a broken stream for a complete one."""
        for sock in (self.client, self.upstream):
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            self.proxy.discard(sock)
        for flow in (self.up, self.down):
            if flow is not None:
                flow.release()
        self.proxy.connections.discard(self)


def _interest(reading: _Flow, writing: _Flow) -> int:
    """What epoll must report on a socket: EPOLLIN while the flow that reads it waits for
    bytes, EPOLLOUT while the flow that writes to it waits for room."""
    return (_IN if reading.state == WAIT_IN else 0) | (_OUT if writing.state == WAIT_OUT else 0)


class _TcpForwarder:
    """A published TCP port: accepts clients and connects each one to the container."""

    def __init__(self, proxy: Proxy, sock: socket.socket, target: tuple[str, int]) -> None:
        self.proxy, self.sock, self.target = proxy, sock, target
        self.family = sock.family  # of the clients; proxy.family is the container's
        self.congestion: bytes | None = LOCAL_CONGESTION
        # Nagle's algorithm would hold back a small segment while an earlier one is not
        # acknowledged yet: a relay must not add delays that the two ends did not ask
        # for. An accepted socket is a clone of the listening one and inherits its
        # TCP_NODELAY, so one setsockopt(2) here serves every client.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_ready(self, events: int) -> None:
        """A client is waiting: accept(2) it, and connect to the container for it.

        One accept per event: the listening socket is level-triggered, so while more
        clients wait, the next epoll_wait(2) reports it again at once. Accepting until
        EAGAIN would end every wake-up with a failed accept(2) (and a Python exception),
        which is every connection when clients come one at a time."""
        proxy = self.proxy
        try:
            # socket.accept() is this call plus a socket object whose family and type it
            # converts to enums, every time: a sixth of the proxy's Python work for a
            # short connection. The object made from the bare fd below skips that.
            fd, _ = self.sock._accept()
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                _log(f"accept: {e.strerror}; waiting for a connection to close")
                proxy.pause(self.sock)
            return  # or ECONNABORTED and the like: that client is gone already
        client = socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
        client.setblocking(False)  # accept(2) does not pass O_NONBLOCK on
        try:
            upstream = self._upstream_socket()
        except OSError as e:
            _log(f"connect to {self.target[0]}:{self.target[1]}: {e.strerror}")
            client.close()
            if e.errno in (errno.EMFILE, errno.ENFILE):
                proxy.pause(self.sock)
            return
        connection = _Connection(proxy, client, upstream, self.target)
        proxy.connections.add(connection)
        connection.start()

    def _upstream_socket(self) -> socket.socket:
        """A non-blocking TCP socket for a connection to the container, without Nagle's
        algorithm and with the ``LOCAL_CONGESTION`` control."""
        upstream = socket.socket(self.proxy.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.congestion:
            try:
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, self.congestion)
            except OSError:  # not built, or not allowed to this user: the default, always
                self.congestion = None
        return upstream

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


class _UdpSession:
    """One UDP client: its address and our connected socket to the container."""

    __slots__ = ("forwarder", "peer", "sock", "last")

    def __init__(self, forwarder: _UdpForwarder, peer: tuple, sock: socket.socket) -> None:
        self.forwarder, self.peer, self.sock = forwarder, peer, sock
        self.last = time.monotonic()

    def on_reply(self, events: int) -> None:
        """Datagrams from the container: send each back to the client, from the published
        port (sendto on the forwarder's socket), as the client expects."""
        forwarder = self.forwarder
        for _ in range(UDP_BATCH):
            try:
                data = self.sock.recv(UDP_MAX)
            except BlockingIOError:
                break
            except OSError:
                continue  # the ICMP error (port unreachable...) of an earlier datagram
            # UDP may drop: when the socket buffer is full, or the client is gone.
            with contextlib.suppress(OSError):
                forwarder.sock.sendto(data, self.peer)
        self.last = time.monotonic()
        forwarder.sessions.move_to_end(self.peer)

    def close(self) -> None:
        """End the session: its socket is closed after this batch of events."""
        self.forwarder.proxy.discard(self.sock)


class _UdpForwarder:
    """A published UDP port. UDP has no connections, so the proxy tracks *sessions*: each
    client address gets a UDP socket connect(2)ed to the container, whose replies then
    carry no doubt about the client they belong to. A session ends after ``timeout``
    seconds without a datagram either way; past ``max_clients``, the least recently
    active session makes room (``sessions`` is kept in order of last activity)."""

    def __init__(
        self,
        proxy: Proxy,
        sock: socket.socket,
        target: tuple[str, int],
        timeout: float,
        max_clients: int,
    ) -> None:
        self.proxy, self.sock, self.target = proxy, sock, target
        self.timeout, self.max_clients = timeout, max_clients
        self.sessions: OrderedDict[tuple, _UdpSession] = OrderedDict()

    def on_ready(self, events: int) -> None:
        """Datagrams from clients: send each on through its client's session, opened on
        the client's first datagram. At most ``UDP_BATCH`` per wake-up, so that a flood
        on one port cannot starve the others (the socket is level-triggered)."""
        sessions = self.sessions
        now = time.monotonic()
        for _ in range(UDP_BATCH):
            try:
                data, peer = self.sock.recvfrom(UDP_MAX)
            except OSError:  # EAGAIN: no more datagrams
                return
            session = sessions.get(peer)
            if session is None:
                session = self._open(peer)
                if session is None:
                    continue
            else:
                session.last = now
                sessions.move_to_end(peer)
            # Dropped, as UDP may; ECONNREFUSED here is an earlier datagram's ICMP error.
            with contextlib.suppress(OSError):
                session.sock.send(data)

    def _open(self, peer: tuple) -> _UdpSession | None:
        """A session for a new client: a UDP socket connect(2)ed to the container, which
        then receives only the container's datagrams. None if it cannot be made."""
        proxy = self.proxy
        try:
            sock = socket.socket(proxy.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            try:
                sock.connect(self.target)
            except OSError:
                sock.close()
                raise
        except OSError as e:
            _log(f"udp to {self.target[0]}:{self.target[1]}: {e.strerror}")
            return None
        if len(self.sessions) >= self.max_clients:
            self.sessions.popitem(last=False)[1].close()
        session = self.sessions[peer] = _UdpSession(self, peer, sock)
        proxy.epoll.register(sock, select.EPOLLIN)
        proxy.handlers[sock.fileno()] = session.on_reply
        return session

    def expire(self, now: float) -> float | None:
        """End the sessions idle for ``timeout``; return when the next one will be due."""
        sessions = self.sessions
        while sessions:
            oldest = next(iter(sessions.values()))
            due = oldest.last + self.timeout
            if due > now:
                return due
            del sessions[oldest.peer]
            oldest.close()
        return None

    def close(self) -> None:
        """End every session, and stop receiving on the published port."""
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()
        self.sock.close()


class Proxy:
    """Relays every mapping to ``target`` until ``serve_until``'s stop fd turns readable.

    The proxy owns the mappings' sockets (and sets them non-blocking): it closes them
    when it stops. ``zero_copy=False`` relays with recv/send instead of splice.
    """

    def __init__(
        self,
        target: str,
        mappings: Iterable[Mapping],
        *,
        udp_timeout: float = 60.0,
        udp_max_clients: int = 1024,
        zero_copy: bool = True,
    ) -> None:
        self.family = socket.AF_INET6 if ":" in target else socket.AF_INET
        self.epoll = select.epoll()
        #: What to call for an event on each registered fd.
        self.handlers: dict[int, Callable[[int], None]] = {}
        #: The events each connection's socket is registered for (see ``watch``).
        self.interest: dict[int, int] = {}
        self.graveyard: list[socket.socket] = []
        self.paused: list[socket.socket] = []
        self.connections: set[_Connection] = set()
        self.pipes = _Pipes(zero_copy)
        self.forwarders: list[_TcpForwarder | _UdpForwarder] = []
        self.udp: list[_UdpForwarder] = []
        for mapping in mappings:
            mapping.sock.setblocking(False)
            address = (target, mapping.port)
            if mapping.proto == "tcp":
                forwarder: _TcpForwarder | _UdpForwarder = _TcpForwarder(
                    self, mapping.sock, address
                )
            else:
                forwarder = _UdpForwarder(self, mapping.sock, address, udp_timeout, udp_max_clients)
                self.udp.append(forwarder)
            self.forwarders.append(forwarder)
            self.epoll.register(mapping.sock, select.EPOLLIN)
            self.handlers[mapping.sock.fileno()] = forwarder.on_ready

    def serve_until(self, stop_fd: int) -> None:
        """Relay until ``stop_fd`` is readable, then close everything."""
        epoll, handlers, graveyard = self.epoll, self.handlers, self.graveyard
        epoll.register(stop_fd, select.EPOLLIN)
        try:
            while True:
                timeout = self._expire_udp() if self.udp else -1.0
                if graveyard:
                    self._bury()
                for fd, events in epoll.poll(timeout):
                    if fd == stop_fd:
                        return
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler(events)
        finally:
            self.close()

    def discard(self, sock: socket.socket) -> None:
        """Stop handling ``sock`` now, close it after this batch of events.

        The kernel gives a new socket the lowest free fd number, so a socket closed and a
        client accepted while handling one batch could share a number, and the old
        socket's remaining events in the batch would reach the new one's handler.
        """
        fd = sock.fileno()
        self.handlers.pop(fd, None)
        self.interest.pop(fd, None)
        self.graveyard.append(sock)
        if self.paused:
            for listener in self.paused:
                self.epoll.modify(listener, select.EPOLLIN)
            self.paused.clear()

    def watch(self, fd: int, events: int) -> None:
        """Have epoll report ``events`` on a connection's socket, edge-triggered (errors
        and hang-ups are always reported): epoll_ctl(EPOLL_CTL_ADD) the first time,
        EPOLL_CTL_MOD when an event is wanted that was not asked for yet. Interest is
        never taken back: an extra edge-triggered event costs at most a spurious wake-up,
        an epoll_ctl(2) a syscall every time. Either way the kernel polls the socket then,
        so readiness that came before the call is reported, not lost."""
        registered = self.interest.get(fd)
        if registered is None:
            self.epoll.register(fd, events | _ET)
        elif events & ~registered:
            events |= registered
            self.epoll.modify(fd, events | _ET)
        else:
            return
        self.interest[fd] = events

    def pause(self, listener: socket.socket) -> None:
        """Out of file descriptors: stop accepting until a socket is closed (a readable
        listener that cannot accept would wake the loop again and again)."""
        self.epoll.modify(listener, 0)
        self.paused.append(listener)

    def _bury(self) -> None:
        """Close the sockets discarded during the last batch of events."""
        for sock in self.graveyard:
            sock.close()  # close(2) also takes the fd out of the epoll set
        self.graveyard.clear()

    def _expire_udp(self) -> float:
        """Expire idle UDP sessions; return the epoll timeout until the next one."""
        now = time.monotonic()
        due = [when for f in self.udp if (when := f.expire(now)) is not None]
        return min(due) - now if due else -1.0

    def close(self) -> None:
        """Close every connection, session and published socket, then the epoll set."""
        self.paused.clear()
        for connection in list(self.connections):
            connection.close()
        for forwarder in self.forwarders:
            forwarder.close()
        self._bury()
        self.pipes.close()
        self.epoll.close()


def _log(message: str) -> None:
    """One line on stderr, which the engine keeps as the container's proxy.log."""
    print(f"minidock-proxy: {message}", file=sys.stderr, flush=True)


def _parse_map(spec: str) -> Mapping:
    """``tcp:FD:PORT`` or ``udp:FD:PORT``: an inherited bound socket and a container port."""
    try:
        proto, fd, port = spec.split(":")
        number = int(port)
        sock = socket.socket(fileno=int(fd))
    except (ValueError, OSError) as e:
        raise argparse.ArgumentTypeError(f"{spec!r}: not PROTO:FD:PORT ({e})") from None
    kind = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}.get(proto)
    if sock.type != kind:
        raise argparse.ArgumentTypeError(f"{spec!r}: fd {fd} is not a {proto} socket")
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"{spec!r}: {port} is not a port number")
    if proto == "tcp" and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise argparse.ArgumentTypeError(f"{spec!r}: fd {fd} is not listening")
    return Mapping(proto, sock, number)


def _target(address: str) -> str:
    """``--target``: an IPv4 or IPv6 address, not a name (no resolver in the relay)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        socket.inet_pton(family, address)
    except OSError:
        raise argparse.ArgumentTypeError(f"{address!r} is not an IP address") from None
    return address


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and relay until SIGTERM or SIGINT; exit 0."""
    # A signal must have a Python handler for its number to be written to the wakeup fd:
    # the loop then sees the pipe readable and stops (the handler itself does nothing).
    stop_r, stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(stop_w)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    parser = argparse.ArgumentParser(
        prog="python -m minidock.network.proxy",
        description="Relay published ports (inherited sockets) to a container's address.",
    )
    parser.add_argument("--target", required=True, type=_target, help="the container's IP")
    parser.add_argument(
        "--map",
        dest="mappings",
        action="append",
        required=True,
        type=_parse_map,
        metavar="{tcp,udp}:FD:PORT",
        help="an inherited socket (TCP: listening, UDP: bound) and the container port",
    )
    parser.add_argument("--udp-timeout", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--udp-max-clients", type=int, default=1024, metavar="N")
    parser.add_argument("--copy", action="store_true", help="recv/send instead of splice")
    args = parser.parse_args(argv)
    if args.udp_timeout <= 0 or args.udp_max_clients < 1:
        parser.error("--udp-timeout and --udp-max-clients must be positive")
    # Six fds per TCP connection (two sockets, two pipes): lift the soft limit to the hard.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # "unlimited" is more than nr_open allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Proxy(
        args.target,
        args.mappings,
        udp_timeout=args.udp_timeout,
        udp_max_clients=args.udp_max_clients,
        zero_copy=not args.copy,
    ).serve_until(stop_r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
