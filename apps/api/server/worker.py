"""gunicorn's gthread worker, except that no thread ever waits for a client.

The stock gthread worker hands a connection to a thread once its first byte arrives, and
the thread reads the rest of the request from a blocking socket with no deadline: a
client that sends one byte, or a header line now and then, holds that thread as long as
it likes, and `threads` such clients stop the worker. Its polite close also waits, in the
main loop, up to 2 s for each client to hang up. (Issue 11, finding 1.)

RequestBufferingWorker reads each request in its main loop, with non-blocking reads, until
the whole request is there: the head, and a body declared up to `max_body_bytes` (the
app's MAX_CONTENT_LENGTH) by Content-Length or chunked; a longer body gets 413 at once.
Only then does a thread get it,
with gunicorn's own parser reading those bytes from memory, so a thread never blocks on a
client. A connection that has not delivered a whole request `read_timeout` seconds
(HTTP_REQUEST_READ_TIMEOUT_SECONDS) after the server started waiting for it is cut off,
with a 408 when it had started one. Connections are closed without the main loop waiting
on the client, and the requests gunicorn refuses (malformed, over its limits) get the
API's JSON error shape and security headers instead of gunicorn's HTML page (finding 8).

Everything else is gunicorn's: keep-alive, the graceful stop on SIGTERM, max_requests,
reuse_port, the worker's signal handlers. gunicorn.conf.py selects it with
`worker_class = RequestBufferingWorker.configured(...)`; the gunicorn internals it relies on
are named and checked in apps/api/app/compat/gunicorn.py.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import re
import selectors
import socket
import time
from collections import OrderedDict
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn.config import Config
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import TConn, ThreadWorker

from apps.api.app.compat import gunicorn as compat
from apps.api.app.errors import error_document

# The most the main loop reads from a socket at once.
RECV_SIZE = 64 * 1024
# The parser gets a request's bytes in pieces of this size, as a socket would hand them over.
PIECE_SIZE = 64 * 1024
# A polite close (RFC 9112 section 9.6) reads and drops what the client still sends, for at
# most this long and this much, as gunicorn's util.close_graceful does, but from the poller.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Verdict(enum.Enum):
    """What the bytes received so far make of a request."""

    INCOMPLETE = "more bytes are needed"
    COMPLETE = "the whole request is here"
    TOO_LARGE = "the body is over the limit: answer 413 from the main loop, then close"
    MALFORMED = "the head is malformed or over a limit: gunicorn's parser refuses it"
    BAD_BODY = "the chunked body's framing is malformed"


# The header fields that frame a request, any case (spelled out: faster than re.IGNORECASE).
_FRAMING_FIELD = re.compile(
    rb"\r\n([Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]"
    rb"|[Tt][Rr][Aa][Nn][Ss][Ff][Ee][Rr]-[Ee][Nn][Cc][Oo][Dd][Ii][Nn][Gg]"
    rb"|[Ee][Xx][Pp][Ee][Cc][Tt]):[ \t]*([^\r\n]*)"
)
_HEX = re.compile(rb"[0-9A-Fa-f]+")


class RequestFraming:
    """Tells, from the bytes a connection sent so far, whether one HTTP/1.1 request is whole.

    It reads only what framing needs (where the head ends; Content-Length,
    Transfer-Encoding and Expect; chunk sizes) and leaves every other judgement to
    gunicorn's parser: what it calls MALFORMED, the parser refuses without needing more
    bytes. Each scan resumes where the last one stopped, so a request that arrives a byte
    at a time costs linear time.
    """

    def __init__(self, head_limit: int, body_limit: int, chunk_line_limit: int) -> None:
        self.head_limit = head_limit
        self.body_limit = body_limit
        self.chunk_line_limit = chunk_line_limit
        self.reset()

    def reset(self) -> None:
        """Start over for the next request."""
        self.head_end = -1
        self.expects_continue = False
        self._searched = 0
        self._length = 0
        self._chunked = False
        self._chunk_at = 0
        self._decoded = 0

    def scan(self, data: bytearray) -> Verdict:
        """Return what `data`, every byte received for this request so far, amounts to."""
        if self.head_end < 0:
            verdict = self._scan_head(data)
            if verdict is not None:
                return verdict
        if self._chunked:
            return self._scan_chunks(data)
        return Verdict.COMPLETE if len(data) - self.head_end >= self._length else Verdict.INCOMPLETE

    def _scan_head(self, data: bytearray) -> Verdict | None:
        """Find the end of the head; return a verdict, or None to go on with the body."""
        end = data.find(b"\r\n\r\n", max(0, self._searched - 3))
        # The parser refuses a bare LF in a head at once: waiting for an end the head will
        # never have would only hold the connection. A CR just before the new bytes may pair
        # with an LF among them.
        start = self._searched - 1 if self._searched and data[self._searched - 1] == 13 else self._searched
        stop = len(data) if end < 0 else end
        if data.count(b"\n", start, stop) != data.count(b"\r\n", start, stop):
            return Verdict.MALFORMED
        if end < 0:
            self._searched = len(data)
            return Verdict.MALFORMED if len(data) > self.head_limit else Verdict.INCOMPLETE
        self.head_end = end + 4
        return self._read_framing(data, end)

    def _read_framing(self, data: bytearray, end: int) -> Verdict | None:
        """Read how the body is framed from the head; return a verdict, or None to go on with the body."""
        lengths: list[bytes] = []
        codings: list[bytes] = []
        expect = False
        for match in _FRAMING_FIELD.finditer(data, 0, end):
            name, value = match[1].lower(), match[2].rstrip(b" \t")
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings += [coding.strip(b" \t").lower() for coding in value.split(b",")]
            else:
                expect = expect or value.lower() == b"100-continue"
        if codings:
            # The parser refuses codings that do not end with chunked, and chunked with a length.
            if lengths or codings[-1] != b"chunked":
                return Verdict.MALFORMED
            self._chunked = True
            self._chunk_at = self.head_end
        elif lengths:
            if len(lengths) > 1 or not lengths[0].isdigit():
                return Verdict.MALFORMED
            self._length = int(lengths[0])
            if self._length > self.body_limit:
                return Verdict.TOO_LARGE
        if expect and (self._chunked or self._length > 0):
            start = 2 if data.startswith(b"\r\n") else 0  # one empty line may precede a request
            self.expects_continue = data[start : data.find(b"\r\n", start)].endswith(b" HTTP/1.1")
        return None

    def _scan_chunks(self, data: bytearray) -> Verdict:
        """Follow a chunked body from the last whole chunk seen."""
        at = self._chunk_at
        while True:
            line_end = data.find(b"\r\n", at)
            if line_end < 0:
                return Verdict.BAD_BODY if len(data) - at > self.chunk_line_limit else Verdict.INCOMPLETE
            size_text = bytes(data[at:line_end]).split(b";", 1)[0].rstrip(b" \t")
            if not _HEX.fullmatch(size_text):
                return Verdict.BAD_BODY
            start, size = line_end + 2, int(size_text, 16)
            if size == 0:
                return self._scan_trailers(data, start)
            end = start + size
            # Enough of the body to go past the limit: the app reads up to it and refuses.
            if self._decoded + min(len(data), end) - start > self.body_limit:
                return Verdict.TOO_LARGE
            if len(data) < end + 2:
                self._chunk_at = at
                return Verdict.INCOMPLETE
            if data[end : end + 2] != b"\r\n":
                return Verdict.BAD_BODY
            self._decoded += size
            at = self._chunk_at = end + 2

    def _scan_trailers(self, data: bytearray, start: int) -> Verdict:
        """Find the end of the trailer section after the last chunk."""
        if data[start : start + 2] == b"\r\n" or data.find(b"\r\n\r\n", start) >= 0:
            return Verdict.COMPLETE
        return Verdict.BAD_BODY if len(data) - start > self.head_limit else Verdict.INCOMPLETE


class _Connection(TConn):
    """A client connection, with the bytes of the request it is sending."""

    def __init__(self, cfg: Config, sock: socket.socket, client: Any, server: Any, framing: RequestFraming) -> None:
        super().__init__(cfg, sock, client, server)
        # gunicorn's thread waits for a first byte unless told it came: the main loop has it.
        self.data_ready = True
        self.framing = framing
        self.received = bytearray()
        self.deadline = 0.0
        self.continue_sent = False
        self.feed = compat.ParserFeed(PIECE_SIZE)

    @property
    def host(self) -> str:
        """Return the client's address, for the log."""
        return self.client[0] if isinstance(self.client, tuple) else str(self.client)


def _send_now(sock: socket.socket, data: bytes) -> None:
    """Send a short reply without blocking; what the socket's buffer cannot take is dropped."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(data)


# gunicorn's refusals (gunicorn.workers.base.Worker.handle_error) in the API's words, first match wins.
_REFUSALS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str, str], ...] = (
    (
        (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName, http_errors.ConfigurationProblem),
        500,
        "internal_error",
        "the server failed to handle this request",
    ),
    (http_errors.LimitRequestLine, 414, "uri_too_long", "the request line is longer than {line_limit} bytes"),
    (
        http_errors.LimitRequestHeaders,
        431,
        "request_header_fields_too_large",
        "the request has too many headers, or too large ones",
    ),
    (
        http_errors.UnsupportedTransferCoding,
        501,
        "not_implemented",
        "this Transfer-Encoding is not supported; send the body with Content-Length or chunked",
    ),
    (http_errors.ExpectationFailed, 417, "expectation_failed", "the only expectation supported is 100-continue"),
    (http_errors.ForbiddenProxyRequest, 403, "forbidden", "requests from this proxy are not allowed"),
    (
        (http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension),
        400,
        "bad_request",
        "the chunked body is malformed",
    ),
    (
        (http_errors.InvalidHeader, http_errors.InvalidHeaderName, http_errors.ObsoleteFolding),
        400,
        "bad_request",
        "a header is malformed or repeated, or Content-Length and Transfer-Encoding contradict each other",
    ),
    (
        (http_errors.InvalidRequestLine, http_errors.InvalidRequestMethod, http_errors.InvalidHTTPVersion),
        400,
        "bad_request",
        "the request line is not valid HTTP/1.1",
    ),
    (http_errors.ParseException, 400, "bad_request", "the request is not valid HTTP/1.1"),
)


def _refusal(exc: BaseException) -> tuple[int, str, str]:
    """Return the status, code and message that answer `exc`; anything unknown is a 500."""
    for kinds, status, code, message in _REFUSALS:
        if isinstance(exc, kinds):
            return status, code, message
    return 500, "internal_error", "the server failed to handle this request"


def unsupported_settings(cfg: Config) -> list[str]:
    """Return a sentence for each gunicorn setting this worker cannot serve safely."""
    problems = []
    if cfg.is_ssl:
        problems.append("TLS (certfile, keyfile): terminate TLS in a proxy in front")
    if "h2" in cfg.http_protocols:
        problems.append("HTTP/2 (http_protocols h2)")
    if cfg.protocol != "http":
        problems.append(f"protocol {cfg.protocol}")
    if cfg.proxy_protocol != "off":
        problems.append("the PROXY protocol (proxy_protocol)")
    if cfg.limit_request_line == 0:
        problems.append("limit_request_line 0 (unlimited): a request line would grow in memory without bound")
    return problems


class RequestBufferingWorker(ThreadWorker):
    """gthread, with every request read in full by the main loop before a thread serves it."""

    # Set by configured(); the defaults are the app's (HTTP_REQUEST_READ_TIMEOUT_SECONDS, MAX_CONTENT_LENGTH).
    read_timeout: float = 10.0
    max_body_bytes: int = 1024 * 1024
    reply_headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def configured(
        cls, *, read_timeout: float, max_body_bytes: int, reply_headers: tuple[tuple[str, str], ...]
    ) -> type[RequestBufferingWorker]:
        """Return this worker class with these settings, for gunicorn's `worker_class`."""
        settings = {"read_timeout": read_timeout, "max_body_bytes": max_body_bytes, "reply_headers": reply_headers}
        return type(cls.__name__, (cls,), {"__module__": cls.__module__, "__doc__": cls.__doc__, **settings})

    @classmethod
    def check_config(cls, cfg: Config, log: Any) -> None:
        """Refuse to start with settings this worker cannot serve, or a gunicorn it was not checked with."""
        super().check_config(cfg, log)
        compat.verify()
        problems = unsupported_settings(cfg)
        if problems:
            raise SystemExit(f"the request-buffering worker does not support {'; '.join(problems)}.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Set up as gthread does, plus the head limits and the deadlines (called before the fork)."""
        super().__init__(*args, **kwargs)
        line, section, field_size = compat.head_limits(self.cfg)
        self._line_limit = line  # named in the 414's message
        # Past this many bytes with no end of the head, the parser, reading them a piece at
        # a time, refuses the head (414 or 431) before it runs out: it never needs more.
        self._head_limit = line + 2 + section + PIECE_SIZE
        self._chunk_line_limit = field_size
        # Connections waiting for the rest of a request, and polite closes, oldest deadline first.
        self._reading: OrderedDict[_Connection, None] = OrderedDict()
        self._closing: OrderedDict[socket.socket, list[float]] = OrderedDict()
        self._stopping_since: float | None = None
        self.cut_off = 0

    # -- reading requests in the main loop -------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        """Accept a connection and read its first request in the main loop."""
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        framing = RequestFraming(self._head_limit, self.max_body_bytes, self._chunk_line_limit)
        conn = _Connection(self.cfg, sock, client, listener.getsockname(), framing)
        self._begin(conn, b"")
        # The request is often there already: no trip through the poller then.
        if self._receive(conn):
            self._wait(conn)

    def on_client_socket_readable(self, conn: _Connection, client: socket.socket) -> None:
        """A kept-alive connection sent something: read its next request in the main loop."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._begin(conn, b"")
        if self._receive(conn):
            self._wait(conn)

    def _begin(self, conn: _Connection, received: bytes) -> None:
        """Start waiting for a request on `conn`, from the bytes already received; its deadline starts now."""
        conn.framing.reset()
        conn.received = bytearray(received)
        conn.deadline = time.monotonic() + self.read_timeout
        conn.continue_sent = False

    def _wait(self, conn: _Connection) -> None:
        """Have the poller tell when `conn` sends more."""
        self._reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _stop_waiting(self, conn: _Connection) -> None:
        """Take `conn` off the poller and the deadlines, if it is there."""
        if conn in self._reading:
            del self._reading[conn]
            self.poller.unregister(conn.sock)

    def _on_readable(self, conn: _Connection, _sock: socket.socket) -> None:
        """Read more of a request (the poller's callback)."""
        self._receive(conn)

    def _receive(self, conn: _Connection) -> bool:
        """Read what the client sent; return True while the request is still incomplete."""
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""  # reset: gone like a closed one
        if not data:
            self._stop_waiting(conn)
            self._close(conn)
            return False
        conn.received += data
        return self._advance(conn)

    def _advance(self, conn: _Connection) -> bool:
        """Serve, refuse or keep waiting for the request received so far; return True to keep waiting."""
        verdict = conn.framing.scan(conn.received)
        if verdict is Verdict.INCOMPLETE:
            if conn.framing.expects_continue and not conn.continue_sent:
                conn.continue_sent = True
                _send_now(conn.sock, CONTINUE)
            return True
        self._stop_waiting(conn)
        if verdict is Verdict.BAD_BODY:
            self._refuse(conn, 400, "bad_request", "the chunked body is malformed")
            return False
        if verdict is Verdict.TOO_LARGE:
            # Refused here, not by the app: a chunked body cut at the limit ends inside a
            # chunk, which gunicorn's reader cannot hand to the app as a body.
            self._refuse(
                conn,
                413,
                "payload_too_large",
                f"the body is larger than MAX_CONTENT_LENGTH ({self.max_body_bytes} bytes)",
            )
            return False
        conn.feed.put(bytes(conn.received))
        conn.received = bytearray()
        if conn.parser is None:  # one parser per connection, as gunicorn has
            conn.parser = compat.request_parser(self.cfg, conn.feed, conn.client)
        self.enqueue_req(conn)
        return False

    # -- in a thread: serving a request whose bytes are all in memory ------------------------

    def handle_request(self, req: Any, conn: _Connection) -> bool:
        """Serve one request from memory."""
        compat.skip_continue(req)  # the main loop sent 100 Continue if it wanted the body
        if compat.is_chunked(req):
            # Decoded here, a malformed chunk or trailer is a 400 from handle_error, not an
            # exception inside the app.
            compat.decode_chunked_body(req)
        return super().handle_request(req, conn)

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """Answer a request gunicorn refused, or one that failed outside the app, in the API's error shape."""
        status, code, message = _refusal(exc)
        host = addr[0] if isinstance(addr, tuple) else str(addr or "")
        if status == 500:
            self.log.exception("error handling a request from %s", host)
        else:
            self.log.info("refused a request from %s: %d (%s)", host, status, type(exc).__name__)
        message = message.format(line_limit=self._line_limit)
        _send_now(client, self._error_reply(status, code, message))

    def _error_reply(self, status: int, code: str, message: str) -> bytes:
        """Return a whole HTTP reply in the API's error shape, with the security headers, that closes."""
        body = json.dumps(error_document(code, message)).encode()
        head = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.reply_headers),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

    # -- back in the main loop: the next request, or closing ------------------------------

    def finish_request(self, conn: _Connection, fs: Any) -> None:
        """After a thread served a request: read the next one, keep the connection alive, or close it."""
        try:
            keep = fs.result()
        except Exception:  # handle() answers every error itself; here the connection only closes
            keep = False
        if not keep:
            self._close(conn)
            return
        conn.sock.setblocking(False)
        pipelined = compat.take_unparsed(conn.parser) + conn.feed.rest()
        if pipelined:
            self._begin(conn, pipelined)
            if self._advance(conn):
                self._wait(conn)
            return
        # gunicorn's keep-alive wait, as in ThreadWorker.finish_request.
        conn.set_timeout()
        if not self.alive:
            conn.timeout = min(conn.timeout, time.monotonic() + compat.STOP_LINGER)
        self.keepalived_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))

    def _refuse(self, conn: _Connection, status: int, code: str, message: str) -> None:
        """Answer `conn` with an error from the main loop, then close it."""
        _send_now(conn.sock, self._error_reply(status, code, message))
        self._close(conn)

    def _close(self, conn: _Connection) -> None:
        """Close politely (RFC 9112 section 9.6): send FIN, drop what the client still sends, then close."""
        sock = conn.sock
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._closed(sock)
            return
        self._closing[sock] = [time.monotonic() + LINGER_SECONDS, 0]
        self.poller.register(sock, selectors.EVENT_READ, self._drain)

    def _drain(self, sock: socket.socket) -> None:
        """Drop what a closing connection still sends; close it at its end or past the cap."""
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        state = self._closing[sock]
        state[1] += len(data)
        if not data or state[1] >= LINGER_BYTES:
            self._finish_close(sock)

    def _finish_close(self, sock: socket.socket) -> None:
        """End a polite close."""
        del self._closing[sock]
        self.poller.unregister(sock)
        self._closed(sock)

    def _closed(self, sock: socket.socket) -> None:
        """Close the socket and count the connection gone."""
        self.nr_conns -= 1
        with contextlib.suppress(OSError):
            sock.close()

    # -- deadlines, checked by gunicorn's main loop about once a second ------------------------

    def murder_pending(self) -> None:
        """Cut off connections past their request deadline; end polite closes past theirs."""
        super().murder_pending()
        now = time.monotonic()
        while self._reading:
            conn = next(iter(self._reading))
            if conn.deadline > now:
                break
            self._cut_off(conn)
        if not self.alive:
            self._close_idle_when_stopping(now)
        while self._closing:
            sock, (deadline, _) = next(iter(self._closing.items()))
            if deadline > now:
                break
            self._finish_close(sock)

    def _cut_off(self, conn: _Connection) -> None:
        """Close a connection past its deadline: a 408 if it had begun a request, else nothing."""
        self._stop_waiting(conn)
        if not conn.received:
            self.log.debug("closed an idle connection from %s: no request within %g s", conn.host, self.read_timeout)
            self._close(conn)
            return
        self.cut_off += 1
        self.log.info(
            "closed the connection from %s: no whole request within %g s (%d bytes of it came; %d cut off so far)",
            conn.host,
            self.read_timeout,
            len(conn.received),
            self.cut_off,
        )
        message = f"the request did not arrive in full within {self.read_timeout:g} s"
        self._refuse(conn, 408, "request_timeout", message)

    def _close_idle_when_stopping(self, now: float) -> None:
        """Close the connections that have not begun a request, once a stopping worker's linger is over."""
        # A stopping worker closes connections that have not begun a request after the same
        # short linger gunicorn grants its idle kept-alive ones; a request on its way keeps
        # its deadline and is answered with Connection: close.
        if self._stopping_since is None:
            self._stopping_since = now
        if now >= self._stopping_since + compat.STOP_LINGER:
            for conn in [conn for conn in self._reading if not conn.received]:
                self._stop_waiting(conn)
                self._close(conn)
