"""gunicorn internals the request-buffering worker (apps/api/server/worker.py) relies on.

gunicorn documents custom worker classes (`worker_class`) as its extension point; the
worker subclasses the gthread worker and overrides the methods its main loop calls
(`accept`, `on_client_socket_readable`, `finish_request`, `murder_pending`) and the ones a
thread runs (`handle_request`, `handle_error`), and it uses the attributes they share
(`poller`, `keepalived_conns`, `nr_conns`, a connection's `parser` and `data_ready`). Below
are the few places it reaches further in, one function each:

- a request's bytes, read by the worker's main loop, are handed to gunicorn's own parser
  as an iterable (the parser reads sockets and iterables alike; `ParserFeed`), so a
  thread parses from memory and never reads the socket;
- what the parser read beyond the request (a pipelined next request) is taken back;
- the parser's head limits, computed as the parser computes them, so the main loop stops
  buffering exactly where the parser would refuse;
- `Expect: 100-continue` is answered by the main loop, so gunicorn must not answer again;
- a chunked body is decoded by gunicorn's reader before the app runs, so a malformed one
  is a 400 from the worker rather than an exception inside the app.

`verify()` checks each against the installed release by using it.
"""

from __future__ import annotations

import inspect
import io
import logging
import socket
from collections.abc import Iterable
from typing import Any

from gunicorn import http
from gunicorn.config import Config
from gunicorn.http.body import Body, ChunkedReader
from gunicorn.http.errors import InvalidChunkSize, LimitRequestHeaders
from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE, MAX_HEADERS, MAX_REQUEST_LINE
from gunicorn.workers import gthread

from . import require

DISTRIBUTION = "gunicorn"
CHECKED = ">=27.0,<27.1"

# The gthread worker's methods and attributes the worker overrides or uses.
THREAD_WORKER_METHODS = (
    "accept",
    "enqueue_req",
    "finish_request",
    "on_client_socket_readable",
    "murder_keepalived",
    "murder_pending",
    "handle",
    "handle_request",
    "handle_error",
    "set_accept_enabled",
)
THREAD_WORKER_ATTRIBUTES = ("poller", "keepalived_conns", "nr_conns", "max_keepalived", "tpool", "alive")
CONNECTION_ATTRIBUTES = ("sock", "client", "parser", "data_ready", "initialized", "timeout")

# How long a stopping gthread worker keeps an idle connection open for a request already on its way.
STOP_LINGER = gthread.STOP_KEEPALIVE_LINGER


class ParserFeed:
    """A connection's request bytes as gunicorn's parser reads them: in pieces of `piece_size`,
    as a socket hands them over, then the end of input, never a blocking read.

    gunicorn's parser wraps an iterable source in an IterUnreader, which takes the first
    StopIteration as the end of input for good: the feed must hold a whole request whenever
    the parser reads (the worker's framing sees to it), and a connection whose parser did
    see the end is closed, never fed again.
    """

    def __init__(self, piece_size: int) -> None:
        self.piece_size = piece_size
        self._data = b""
        self._at = 0

    def __iter__(self) -> ParserFeed:
        return self

    def __next__(self) -> bytes:
        if self._at >= len(self._data):
            raise StopIteration
        piece = self._data[self._at : self._at + self.piece_size]
        self._at += len(piece)
        return piece

    def put(self, data: bytes) -> None:
        """Hand the parser a whole request (and whatever came after it)."""
        self._data, self._at = data, 0

    def rest(self) -> bytes:
        """Return (and consume) the bytes the parser has not asked for."""
        rest = self._data[self._at :]
        self._data, self._at = b"", 0
        return rest


def request_parser(cfg: Config, feed: Iterable[bytes], client: Any) -> Any:
    """Return gunicorn's HTTP/1 parser reading requests from `feed` instead of a socket."""
    return http.get_parser(cfg, feed, client)


def take_unparsed(parser: Any) -> bytes:
    """Return (and remove) the bytes the parser read ahead of what it has parsed."""
    return parser.unreader.take_buffered()


def head_limits(cfg: Config) -> tuple[int, int, int]:
    """Return the parser's limits: request line, header section (as it buffers one), one field.

    The same arithmetic as gunicorn.http.message.Request and Message: 0 or a negative
    value means gunicorn's maximum, except a request line of 0, which is unlimited
    (the worker refuses that setting).
    """
    line = cfg.limit_request_line
    line = MAX_REQUEST_LINE if line < 0 or line >= MAX_REQUEST_LINE else line
    fields = cfg.limit_request_fields
    fields = MAX_HEADERS if fields <= 0 or fields > MAX_HEADERS else fields
    field_size = cfg.limit_request_field_size
    field_size = DEFAULT_MAX_HEADERFIELD_SIZE if field_size <= 0 else field_size
    return line, fields * (field_size + 2) + 4, field_size


def skip_continue(request: Any) -> None:
    """Keep gunicorn from sending `100 Continue` for this request: the worker has decided already."""
    request._expected_100_continue = False


def is_chunked(request: Any) -> bool:
    """Return True when the request's body is chunked."""
    return isinstance(request.body.reader, ChunkedReader)


def decode_chunked_body(request: Any) -> None:
    """Read the request's chunked body through gunicorn's reader (from memory) and keep it decoded.

    Raises gunicorn's parse errors (InvalidChunkSize, InvalidHeaderName in a trailer, ...)
    before the app runs, where they become a 400.
    """
    data = request.body.read()
    request.body = Body(io.BytesIO(data))  # Body only ever calls read(size) on its reader


def verify() -> None:
    """Raise IncompatibleVersion unless what the worker relies on is there and behaves as relied on."""
    for name in THREAD_WORKER_METHODS:
        require(callable(getattr(gthread.ThreadWorker, name, None)), DISTRIBUTION, f"ThreadWorker.{name}")
    parameters = list(inspect.signature(gthread.ThreadWorker.handle_error).parameters)
    require(parameters == ["self", "req", "client", "addr", "exc"], DISTRIBUTION, "handle_error(req, client, addr)")
    cfg = Config()
    # Any logger: the worker only keeps it (gunicorn's Logger would reconfigure gunicorn.error).
    worker = gthread.ThreadWorker(1, 0, [], None, 30, cfg, logging.getLogger(__name__))
    try:
        missing = [name for name in THREAD_WORKER_ATTRIBUTES if not hasattr(worker, name)]
        require(not missing, DISTRIBUTION, f"ThreadWorker attributes {missing}")
    finally:
        worker.tmp.close()
    ours, theirs = socket.socketpair()
    try:
        conn = gthread.TConn(cfg, ours, ("127.0.0.1", 1), ("127.0.0.1", 2))
        missing = [name for name in CONNECTION_ATTRIBUTES if not hasattr(conn, name)]
        require(not missing, DISTRIBUTION, f"TConn attributes {missing}")
    finally:
        ours.close()
        theirs.close()
    _verify_parser(cfg)


def _verify_parser(cfg: Config) -> None:
    # A request with a chunked body, and the start of a pipelined one that the parser reads ahead.
    feed = ParserFeed(65536)
    head = b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
    feed.put(head + b"2\r\nok\r\n0\r\n\r\nGET")
    parser = request_parser(cfg, feed, ("127.0.0.1", 1))
    request = next(parser)
    require(getattr(request, "_expected_100_continue", None) is True, DISTRIBUTION, "Request._expected_100_continue")
    skip_continue(request)
    require(is_chunked(request), DISTRIBUTION, "a ChunkedReader for chunked bodies")
    decode_chunked_body(request)
    require(request.body.read() == b"ok", DISTRIBUTION, "a chunked body read through Body.read()")
    require(parser.finish_body(), DISTRIBUTION, "Parser.finish_body()")
    require(take_unparsed(parser) + feed.rest() == b"GET", DISTRIBUTION, "read-ahead in Unreader.take_buffered()")
    # The same parser reads the next request once it is fed.
    feed.put(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    require(next(parser).path == "/next", DISTRIBUTION, "a parser that reads the next request from its iterable")
    line, section, _ = head_limits(cfg)
    require(request.limit_request_line == line, DISTRIBUTION, "Request.limit_request_line as computed here")
    require(request.max_buffer_headers == section, DISTRIBUTION, "Message.max_buffer_headers as computed here")
    # A header section over the limit that never ends is refused once read, not waited on.
    endless = b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * (section + 8192)
    try:
        next(request_parser(cfg, iter([endless[i : i + 65536] for i in range(0, len(endless), 65536)]), None))
    except LimitRequestHeaders:
        pass
    else:
        require(False, DISTRIBUTION, "LimitRequestHeaders for a header section over max_buffer_headers")
    bad = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    request = next(request_parser(cfg, iter([bad]), None))
    try:
        decode_chunked_body(request)
    except InvalidChunkSize:
        pass
    else:
        require(False, DISTRIBUTION, "InvalidChunkSize for a malformed chunk size")
