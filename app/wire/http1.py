"""HTTP/1.1 (RFC 9112), strictly, for both sides: the request head the server reads, the
response head the upstream codec (``app.proxy.exchange``) and tunnels read, the one writer
of a message head, the chunk codec, the field-line and Host grammar, and which messages
carry a body.

pywsgi's own parsing is lax (STACK-FACTS 15-19), and every laxness is a request-smuggling
shape once the request is forwarded. This module owns the rules instead: small pure
functions over bytes (``parse_request_line``, ``parse_field_line``, ``body_framing``,
``origin_form``) plus two readers over any buffered binary file (``read_head``,
``ChunkedReader``). Each violation raises a typed error from ``errors`` that carries the
status it means (400, 405, 414, 431, 505). A client that goes away mid-head raises
``Incomplete``.

It knows nothing of sockets, timeouts, WSGI, or configuration: callers pass the limits.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Callable, NamedTuple

from ..errors import (BadRequest, ClientError, HeadersTooLarge, MethodNotAllowed, UriTooLong,
                     UpstreamProtocolError, VersionNotSupported)

# RFC 9112 §3: a server should accept request lines of at least 8000 octets; longer: 414.
MAX_REQUEST_LINE = 8 * 1024
# More header lines than this: 431 (gunicorn's limit_request_fields default, and nginx's order).
MAX_FIELD_LINES = 100
# RFC 9110 §5.6.2: token = 1*tchar. The one spelling of tchar every pattern is built from.
TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TCHAR = TCHAR.encode()
TOKEN = re.compile(_TCHAR + rb"+")
# RFC 9110 §5.5: a field value is VCHAR, obs-text, SP and HTAB; CR, LF, NUL and the other
# controls are invalid and dangerous, so the request is refused.
FIELD_VALUE_INVALID = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9112 §3.2: no whitespace or controls in the target. Raw bytes >= 0x80 pass, as nginx
# lets them: the target is forwarded byte for byte, never decoded.
TARGET_INVALID = re.compile(rb"[\x00-\x20\x7f]")
# RFC 9112 §3.2 (Host = uri-host [ ":" port ]) and RFC 3986 §3.2.2-3.2.3: a reg-name
# (unreserved, pct-encoded, sub-delims: an IPv4 address is one too), or an IP-literal in
# brackets (an IPv6 address, checked by ``ipaddress``, or an IPvFuture), then an optional
# port of digits. No userinfo, no whitespace, no unbalanced bracket.
HOST = re.compile(r"(?:\[(?:(?P<ipv6>[0-9A-Fa-f:.]+)|v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
                  r"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::(?P<port>[0-9]*))?")
VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
SUPPORTED_VERSIONS = ("HTTP/1.0", "HTTP/1.1")
# RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF. chunk-size is
# 1*HEXDIG: leading zeros of any number are valid (h11 and nginx take them), and at most 16
# significant digits are (a size past 2**64 is no size).
CHUNK_SIZE_LINE = re.compile(
    rb"0*([0-9A-Fa-f]{1,16})"
    rb"((?:[ \t]*;[ \t]*" + _TCHAR + rb"+"
    rb"(?:[ \t]*=[ \t]*(?:" + _TCHAR + rb"+|\"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*\"))?)*)")
MAX_CHUNK_SIZE_LINE = 4096
LAST_CHUNK = b"0\r\n\r\n"           # RFC 9112 §7.1: last-chunk, no trailers, the final CRLF
# RFC 9110 §15.3.5, §15.4.5: a 204 or 304 never has content (nor does 1xx, nor a HEAD's answer).
NO_BODY_STATUSES = frozenset({204, 304})
# RFC 9110 §7.6.1 lets Connection name any field as hop-by-hop, to be removed by the next
# hop. These frame or address the message, and the proxy writes them itself from what it
# parsed: a Connection line never removes them (else a request's body goes upstream
# unframed, and the backend reads it as the next request on a pooled connection).
NEVER_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "host"})
# Empty lines a server skips before a request line (RFC 9112 §2.2 says at least one; nginx
# skips them all): up to this many bytes of them, then 400.
MAX_EMPTY_LINES_BYTES = 8 * 1024
_NO_TOKENS: frozenset[str] = frozenset()
# The common case in one match each, for a head parsed whole (``parse_head``): a valid
# request line of a supported version, and field lines that are all valid (values stripped
# of OWS afterwards). Anything they do not match is parsed line by line, which names what
# is wrong. Neither pattern can backtrack: no two parts can match the same bytes.
_VALID_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([^\x00-\x20\x7f]+) (HTTP/1\.[01])")
_FIELD_LINE = rb"(" + _TCHAR + rb"+):([^\x00-\x08\x0a-\x1f\x7f]*)\r\n"
_VALID_FIELDS = re.compile(rb"(?:" + _FIELD_LINE + rb")*")
_FIELD = re.compile(_FIELD_LINE)
_FIELD_TEXT = re.compile(_FIELD_LINE.decode("latin-1"))   # the same, to take checked text apart
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ], the reason
# HTAB, SP, VCHAR or obs-text. The SP before an empty reason is often left out: taken.
_STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
READ_SIZE = 64 * 1024           # bytes asked of a socket per read, on either side
MAX_TRAILER_BYTES = 16 * 1024


class Incomplete(EOFError):
    """The client closed the connection before the head (or a chunk) was complete."""


# The parsed head is made of named tuples rather than frozen dataclasses: as immutable,
# and several times quicker to make, which counts once per request.

class RequestLine(NamedTuple):
    method: str
    target: str          # as sent, decoded as latin-1 so it re-encodes byte for byte
    version: str         # "HTTP/1.0" or "HTTP/1.1"


class Framing(NamedTuple):
    """How the request body is delimited (RFC 9112 §6.3): chunked, a length, or none."""

    chunked: bool = False
    length: int | None = None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


class Head(NamedTuple):
    request: RequestLine
    fields: tuple[tuple[str, str], ...]   # (name as sent, value without OWS), in order
    framing: Framing
    connection: frozenset[str] = frozenset()   # what its Connection lines list
    has_body: bool = False                # framing.has_body, found once
    expects_continue: bool = False        # a body, and Expect: 100-continue


def request_head(request: RequestLine, fields) -> Head:
    """The ``Head`` of a request line and its field lines, checked: its Host (``check_host``)
    and framing (``body_framing``), read in one pass over the fields."""
    hosts, lengths, codings, connection, expect = [], [], [], [], False
    for name, value in fields:
        lower = name.lower()
        if lower == "host":
            hosts.append(value)
        elif lower == "content-length":
            lengths.append(value)
        elif lower == "transfer-encoding":
            codings.append(value)
        elif lower == "connection":
            connection.append(value)
        elif lower == "expect":
            expect = expect or value.lower() == "100-continue"
    version = request.version
    _check_hosts(hosts, version)
    framing = _framing(lengths, codings, version) if lengths or codings else _NO_BODY
    has_body = framing.has_body
    return Head(request, tuple(fields), framing,
                list_tokens(",".join(connection)) if connection else _NO_TOKENS,
                has_body, expect and has_body)


def parse_request_line(line: bytes) -> RequestLine:
    """``method SP request-target SP HTTP-version``, single spaces (RFC 9112 §3)."""
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not TOKEN.fullmatch(method):
        raise BadRequest("invalid method")
    if not target or TARGET_INVALID.search(target):
        raise BadRequest("invalid request target")
    if not VERSION.fullmatch(version):
        raise BadRequest("invalid HTTP version")
    if version.decode() not in SUPPORTED_VERSIONS:
        raise VersionNotSupported(f"{version.decode()} is not supported")
    return RequestLine(method.decode("ascii"), target.decode("latin-1"), version.decode())


def parse_field_line(line: bytes) -> tuple[str, str]:
    """``field-name ":" OWS field-value OWS`` (RFC 9112 §5), with no obs-fold."""
    if line[:1] in (b" ", b"\t"):
        raise BadRequest("obsolete line folding in the headers")       # RFC 9112 §5.2
    name, colon, value = line.partition(b":")
    if not colon:
        raise BadRequest("a header line without a colon")
    if not TOKEN.fullmatch(name):
        # Includes "Name : value": RFC 9112 §5.1 says a server MUST reject it with 400.
        raise BadRequest("invalid header name")
    value = value.strip(b" \t")
    if FIELD_VALUE_INVALID.search(value):
        raise BadRequest(f"invalid character in the {name.decode()} header")
    return name.decode("ascii"), value.decode("latin-1")


def body_framing(fields, version: str) -> Framing:
    """The body's framing, refusing every ambiguous shape (RFC 9112 §6.1-6.3)."""
    return _framing([value for name, value in fields if name.lower() == "content-length"],
                    [value for name, value in fields if name.lower() == "transfer-encoding"],
                    version)


def _framing(lengths: list[str], codings: list[str], version: str) -> Framing:
    if codings:
        if lengths:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if len(codings) > 1 or codings[0].lower() != "chunked":
            raise BadRequest("Transfer-Encoding other than a single chunked")
        if version == "HTTP/1.0":
            raise BadRequest("chunked Transfer-Encoding in an HTTP/1.0 request")
        return _CHUNKED
    if lengths:
        if len(lengths) > 1:
            raise BadRequest("repeated Content-Length")
        if not lengths[0].isdigit() or not lengths[0].isascii() or len(lengths[0]) > 18:
            raise BadRequest("Content-Length is not a decimal number")
        return Framing(length=int(lengths[0]))
    return _NO_BODY


_CHUNKED, _NO_BODY = Framing(chunked=True), Framing()


def response_has_body(method: str, status: int) -> bool:
    """Whether a response to ``method`` with ``status`` has a body (RFC 9112 §6.3, rule 1):
    never for HEAD, 1xx, 204 or 304, whatever its header fields say."""
    return method != "HEAD" and status >= 200 and status not in NO_BODY_STATUSES


def persists(http10: bool, tokens: frozenset[str]) -> bool:
    """Whether a connection stays open after a message with these ``Connection`` tokens
    (RFC 9112 §9.3): in HTTP/1.1 unless it says ``close``, in HTTP/1.0 only if it says
    ``keep-alive``."""
    return "keep-alive" in tokens if http10 else "close" not in tokens


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1), ``data`` not empty (that is
    ``LAST_CHUNK``)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def chunk_size(line: bytes) -> int | None:
    """The size a chunk-size line (CRLF removed) gives, extensions checked and dropped;
    None when the line is not valid (RFC 9112 §7.1)."""
    match = CHUNK_SIZE_LINE.fullmatch(line)
    return int(match.group(1), 16) if match else None


def list_tokens(value: str) -> frozenset[str]:
    """The items of a comma-separated field value (RFC 9110 §5.6.1), lower-cased, without
    empty ones: ``"keep-alive, X-Private"`` gives ``{"keep-alive", "x-private"}``."""
    if not value:
        return _NO_TOKENS               # the usual case: no such field
    tokens = _SEEN_TOKENS.get(value)
    if tokens is None:
        tokens = frozenset(item for item in (part.strip().lower() for part in value.split(","))
                           if item)
        if len(_SEEN_TOKENS) >= _SEEN_TOKENS_MAX:
            _SEEN_TOKENS.clear()        # bounded: values a client makes up come and go
        _SEEN_TOKENS[value] = tokens
    return tokens


# list_tokens of the values seen lately ("keep-alive", "close", "Upgrade" nearly always).
_SEEN_TOKENS: dict[str, frozenset[str]] = {}
_SEEN_TOKENS_MAX = 256


def hop_by_hop(tokens: frozenset[str]) -> frozenset[str]:
    """The field names that ``Connection`` ``tokens`` make hop-by-hop: all of them but
    ``NEVER_HOP_BY_HOP``."""
    if tokens and not tokens.isdisjoint(NEVER_HOP_BY_HOP):
        return tokens - NEVER_HOP_BY_HOP
    return tokens


def connection_tokens(fields) -> frozenset[str]:
    """What every ``Connection`` line of ``fields`` lists (RFC 9110 §7.6.1), lower-cased:
    ``close``, ``keep-alive``, ``upgrade``, or names of hop-by-hop fields."""
    return list_tokens(",".join(value for name, value in fields if name.lower() == "connection"))


def check_host(fields, version: str) -> None:
    """RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in HTTP/1.0, and valid."""
    _check_hosts([value for name, value in fields if name.lower() == "host"], version)


def _check_hosts(hosts: list[str], version: str) -> None:
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    if not hosts:
        if version == "HTTP/1.1":
            raise BadRequest("an HTTP/1.1 request without a Host header")
        return
    check_host_value(hosts[0])


def check_host_value(value: str, what: str = "Host header") -> None:
    """Refuse (400) a Host, or an absolute-form target's authority (``what``), that is not
    ``uri-host [ ":" port ]`` (``HOST``): RFC 9112 §3.2 says a server MUST answer 400."""
    if host_name(value) is None:
        raise BadRequest(f"invalid {what}: {value[:100]!r}")


def host_name(value: str) -> str | None:
    """The uri-host of a Host value without its port ("" for an empty one), or None when the
    value is not ``uri-host [ ":" port ]`` (``HOST``; an IPv6 literal checked by ``ipaddress``)."""
    match = HOST.fullmatch(value)
    if match is None:
        return None
    ipv6 = match.group("ipv6")
    if ipv6 is not None:
        try:
            ipaddress.IPv6Address(ipv6)
        except ValueError:
            return None
    return value if match.group("port") is None else value[:match.start("port") - 1]


def origin_form(method: str, target: str) -> tuple[str, str | None]:
    """The target to forward in origin-form, and the Host an absolute-form target names.

    Only the path and query of an absolute-form target are kept, so the proxy never connects
    anywhere the target says; ``CONNECT`` is refused (405); authority-form and anything that
    is not a path is refused (400); ``*`` only with ``OPTIONS`` (RFC 9112 §3.2).
    """
    if method == "CONNECT":
        raise MethodNotAllowed("CONNECT is not supported: this is a reverse proxy")
    if target.startswith("/"):
        return target, None
    if target == "*":
        if method != "OPTIONS":
            raise BadRequest("asterisk-form is only for OPTIONS")
        return target, None
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise BadRequest("the request target must be a path")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:]
    if not authority:            # RFC 9110 §4.2.1: an http URI has a non-empty host
        raise BadRequest("invalid authority in the request target")
    # The same rule as a Host (RFC 9110 §4.2.4: no userinfo, which it refuses as well).
    check_host_value(authority, "authority in the request target")
    return (path if path.startswith("/") else "/" + path), authority


def field_lines(fields) -> str:
    """The field lines of a head, each ending in CRLF: ``name: value`` (RFC 9112 §5)."""
    return "".join([": ".join(pair) + "\r\n" for pair in fields])


def render_head(start_line: str, fields) -> bytes:
    """A message head as the bytes that go on the wire: the start line, the field lines,
    the empty line. Latin-1: a target or value holds the bytes received, decoded so."""
    return f"{start_line}\r\n{field_lines(fields)}\r\n".encode("latin-1")


def parse_response_head(head: bytes) -> tuple[bytes, int, str, list[tuple[str, str]]]:
    """A response's version, status, reason and field lines (names as sent, values without
    OWS), from ``head``: the status line and each field line, each with its CRLF, without
    the empty line. The field lines follow the request side's grammar (``_FIELD_LINE``).
    Raises ``UpstreamProtocolError`` for a head that is not a response."""
    first = head.find(b"\r\n")
    status = _STATUS_LINE.fullmatch(head, 0, first)
    if status is None:
        raise UpstreamProtocolError(f"invalid response: bad status line {head[:min(first, 100)]!r}")
    if first + 2 == len(head):
        fields = []
    elif _VALID_FIELDS.fullmatch(head, first + 2) is None:
        raise UpstreamProtocolError("invalid response: bad header line " + repr(next(
            line for line in head[first + 2:-2].split(b"\r\n")
            if not _FIELD.fullmatch(line + b"\r\n"))[:100]))
    else:
        fields = [(name, value.strip(" \t")) for name, value
                  in _FIELD_TEXT.findall(head[first + 2:].decode("latin-1"))]
        if len(fields) > MAX_FIELD_LINES:
            raise UpstreamProtocolError("invalid response: too many header lines")
    reason = status[3]
    return status[1], int(status[2]), reason.decode("latin-1") if reason else "", fields


class ResponseFraming(NamedTuple):
    """How a response's body is delimited and whether its connection lasts (RFC 9112 §6.3,
    §9.3)."""

    has_body: bool
    chunked: bool
    length: int | None          # its Content-Length (0 without a body); None: chunked or to the end
    keep: bool                  # the connection may carry another request after it
    tokens: frozenset[str]      # what its Connection lines list (names it made hop-by-hop)


def response_framing(method: str, status: int, version: bytes, fields) -> ResponseFraming:
    """The framing of a response to ``method`` with ``status`` and ``fields``: none for
    HEAD, 1xx, 204 and 304 (a ``101``'s connection is no longer HTTP: never kept);
    ``Transfer-Encoding`` overrides ``Content-Length`` (and a connection with both is not
    kept); a ``Content-Length`` must be one decimal number (``UpstreamProtocolError``);
    with neither, the body runs to the end of the connection."""
    codings, lengths, connection = None, set(), []
    for name, value in fields:
        lower = name.lower()
        if lower == "content-length":
            lengths.add(value)
        elif lower == "transfer-encoding":
            codings = f"{codings}, {value}" if codings else value
        elif lower == "connection":
            connection.append(value)
    tokens = list_tokens(",".join(connection)) if connection else _NO_TOKENS
    persistent = persists(version == b"HTTP/1.0", tokens)
    if status == 101:
        return ResponseFraming(False, False, 0, False, tokens)
    if not response_has_body(method, status):
        return ResponseFraming(False, False, 0, persistent, tokens)
    if codings is not None:
        if codings.rsplit(",", 1)[-1].strip().lower() == "chunked":
            return ResponseFraming(True, True, None, persistent and not lengths, tokens)
        return ResponseFraming(True, False, None, False, tokens)
    if lengths:
        length = lengths.pop()
        if lengths or not length.strip().isdigit():
            raise UpstreamProtocolError("invalid response: bad Content-Length")
        return ResponseFraming(True, False, int(length), persistent, tokens)
    return ResponseFraming(True, False, None, False, tokens)      # to the end of the connection


def read_line(rfile, budget: int, too_long: Callable[[], ClientError]) -> bytes:
    """One CRLF-terminated line of at most ``budget`` bytes (CRLF included), without CRLF.
    ``too_long`` makes the error for a longer line (made only then: a line is read often)."""
    line = rfile.readline(max(budget, 0) + 1)
    if len(line) > budget:
        raise too_long()
    if not line.endswith(b"\n"):
        raise Incomplete("connection closed in the middle of a line")
    if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
        raise BadRequest("a line not ended by CRLF")   # bare LF or bare CR (RFC 9112 §2.2)
    return line[:-2]


def read_head(rfile, max_bytes: int, first_line: bytes | None = None) -> Head:
    """Read and check a request head; ``first_line`` is the request line if already read.

    Raises ``UriTooLong`` (414) for a request line over ``MAX_REQUEST_LINE`` or
    ``max_bytes``, ``HeadersTooLarge`` (431) past ``max_bytes`` or ``MAX_FIELD_LINES``, and
    ``BadRequest`` (400) for anything malformed or ambiguous.
    """
    line = first_line if first_line is not None else read_request_line(rfile, max_bytes)
    return _head(line, lambda budget, too_long: read_line(rfile, budget, too_long), max_bytes)


def parse_head(data: bytes, max_bytes: int) -> Head:
    """``read_head`` of a head already in memory (the reader's buffer, nearly always):
    ``data`` runs from the request line to the empty line that ends the head, both CRLFs
    included, with no empty line before the request line. The same checks and errors,
    without a read per line; a valid head (nearly all) takes two matches in all."""
    first = data.find(b"\r\n")
    end = len(data) - 2
    request = _VALID_REQUEST_LINE.fullmatch(data, 0, first)
    if request is not None and first + 2 <= MAX_REQUEST_LINE and end + 2 <= max_bytes \
            and _VALID_FIELDS.fullmatch(data, first + 2, end) is not None:
        fields = [(name, value.strip(" \t")) for name, value
                  in _FIELD_TEXT.findall(data[first + 2:end].decode("latin-1"))]
        if len(fields) <= MAX_FIELD_LINES:
            return request_head(RequestLine(request[1].decode("ascii"),
                                            request[2].decode("latin-1"), request[3].decode()),
                                fields)
    lines = iter(data.split(b"\r\n"))

    def next_line(budget: int, too_long: Callable[[], ClientError]) -> bytes:
        line = next(lines)
        if b"\n" in line or b"\r" in line:
            raise BadRequest("a line not ended by CRLF")   # bare LF or bare CR (RFC 9112 §2.2)
        if len(line) + 2 > budget:
            raise too_long()
        return line

    budget = min(MAX_REQUEST_LINE, max_bytes)
    line = next_line(budget, lambda: UriTooLong(f"the request line is over {budget} bytes"))
    return _head(line, next_line, max_bytes)


def _head(line: bytes, next_line: Callable, max_bytes: int) -> Head:
    """The head after its request line ``line``; ``next_line(budget, too_long)`` gives
    each following line without its CRLF."""
    request = parse_request_line(line)
    used = len(line) + 2
    fields = []
    while True:
        line = next_line(max_bytes - used,
                         lambda: HeadersTooLarge(f"the request head is over {max_bytes} bytes"))
        used += len(line) + 2
        if not line:
            break
        if len(fields) == MAX_FIELD_LINES:
            raise HeadersTooLarge(f"more than {MAX_FIELD_LINES} header lines")
        fields.append(parse_field_line(line))
    return request_head(request, fields)


def read_request_line(rfile, max_bytes: int) -> bytes:
    """The request line, skipping the empty lines before it (RFC 9112 §2.2), up to
    ``MAX_EMPTY_LINES_BYTES`` of them."""
    budget = min(MAX_REQUEST_LINE, max_bytes)

    def too_long():
        return UriTooLong(f"the request line is over {budget} bytes")

    skipped = 0
    while True:
        line = read_line(rfile, budget, too_long)
        if line:
            return line
        skipped += 2
        if skipped > MAX_EMPTY_LINES_BYTES:
            raise BadRequest("too many empty lines before the request line")


class ChunkedReader:
    """Decodes a chunked body from ``rfile`` (RFC 9112 §7.1), strictly: the one chunk
    decoder, for a client's request body and a backend's response body alike.

    ``rfile`` has ``readline(limit)`` and ``read(size)`` (a short read is taken).
    ``read(size)`` returns up to ``size`` bytes of data, ``b""`` at the end; trailers are
    checked (at most ``MAX_TRAILER_BYTES``, ``MAX_FIELD_LINES`` lines) and dropped. A
    syntax error raises ``invalid`` (``BadRequest`` for a client's body); EOF raises
    ``Incomplete``.
    """

    def __init__(self, rfile, invalid: type[Exception] = BadRequest):
        self._rfile = rfile
        self._invalid = invalid
        self._left = 0              # bytes left in the current chunk
        self.done = False

    def read(self, size: int) -> bytes:
        if self.done:
            return b""
        if self._left == 0:
            self._left = self._next_size()
            if self._left == 0:
                self._read_trailers()
                self.done = True
                return b""
        data = self._rfile.read(min(size, self._left))
        if not data:
            raise Incomplete("connection closed in the middle of a chunk")
        self._left -= len(data)
        if self._left == 0:
            end = self._rfile.read(2)
            if len(end) == 1:
                end += self._rfile.read(1)
            if end != b"\r\n":
                raise self._invalid("chunk data not followed by CRLF")
        return data

    def _line(self, budget: int, too_long: Callable[[], Exception]) -> bytes:
        try:
            return read_line(self._rfile, budget, too_long)
        except BadRequest as error:
            if self._invalid is BadRequest:
                raise
            raise self._invalid(error.detail) from None

    def _next_size(self) -> int:
        line = self._line(MAX_CHUNK_SIZE_LINE, lambda: self._invalid("chunk size line too long"))
        size = chunk_size(line)
        if size is None:
            raise self._invalid(f"invalid chunk size line {line[:20]!r}")
        return size

    def _trailers_too_large(self) -> Exception:
        if self._invalid is BadRequest:
            return HeadersTooLarge("trailer section too large")      # a client's: 431
        return self._invalid("trailer section too large")

    def _read_trailers(self) -> None:
        budget, lines = MAX_TRAILER_BYTES, 0
        while True:
            line = self._line(budget, self._trailers_too_large)
            if not line:
                return
            budget -= len(line) + 2
            lines += 1
            if lines > MAX_FIELD_LINES:
                raise self._invalid("too many trailer lines")
            try:
                parse_field_line(line)
            except BadRequest as error:
                raise self._invalid(f"invalid trailer: {error.detail}") from None
