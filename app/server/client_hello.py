"""What a TLS ClientHello offers, read from the bytes of its first record before OpenSSL sees it.

``offered_alpn(data)``: the ALPN protocol names (RFC 7301 §3.1) a ClientHello offers, from
the bytes peeked at the start of a connection; None when it offers none, or when ``data``
is not one whole ClientHello record (a ClientHello split over several records or TCP
segments, or anything malformed: the caller then leaves the decision to OpenSSL).
``NO_APPLICATION_PROTOCOL_ALERT`` is the record that refuses such a client. Pure functions:
no sockets, no ssl.

Python's ssl module answers a ClientHello that shares no ALPN protocol with the server by
going on without ALPN (its callback returns "no ack"), where RFC 7301 §3.2 says the server
"MUST" send the fatal ``no_application_protocol`` alert, as nginx does; this module is what
lets ``app.server.tls`` do the same.
"""
from __future__ import annotations

# RFC 8446 §5.1 (and RFC 5246 §6.2): content type, legacy version, length.
RECORD_HEADER = 5
HANDSHAKE = 0x16
CLIENT_HELLO = 1                      # RFC 8446 §4: HandshakeType client_hello
MAX_RECORD = RECORD_HEADER + 2 ** 14  # a TLSPlaintext fragment is at most 2^14 bytes
ALPN_EXTENSION = 16                   # RFC 7301 §3.1: application_layer_protocol_negotiation
# A plaintext fatal alert (level 2), no_application_protocol (120; RFC 7301 §3.2), in a
# record of legacy version TLS 1.2 (RFC 8446 §5.1).
NO_APPLICATION_PROTOCOL_ALERT = bytes((0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 120))


class _Reader:
    """Length-prefixed fields read in order; ``IndexError`` past the end."""

    def __init__(self, data: bytes, start: int, end: int):
        self.data, self.at, self.end = data, start, end

    def number(self, size: int) -> int:
        if self.at + size > self.end:
            raise IndexError("short")
        value = int.from_bytes(self.data[self.at:self.at + size], "big")
        self.at += size
        return value

    def vector(self, length_size: int) -> "_Reader":
        length = self.number(length_size)
        if self.at + length > self.end:
            raise IndexError("short")
        inner = _Reader(self.data, self.at, self.at + length)
        self.at += length
        return inner

    def skip(self, size: int) -> None:
        if self.at + size > self.end:
            raise IndexError("short")
        self.at += size

    def done(self) -> bool:
        return self.at >= self.end


def offered_alpn(data: bytes) -> tuple[bytes, ...] | None:
    """The ALPN names offered by the ClientHello whose first record ``data`` starts with."""
    try:
        if len(data) < RECORD_HEADER or data[0] != HANDSHAKE:
            return None
        record = _Reader(data, 0, len(data))
        record.skip(3)                           # type, legacy_record_version
        fragment = record.vector(2)              # the whole record, or IndexError
        if fragment.number(1) != CLIENT_HELLO:
            return None
        hello = fragment.vector(3)               # the whole ClientHello in this record
        hello.skip(2 + 32)                       # legacy_version, random
        hello.vector(1)                          # legacy_session_id
        hello.vector(2)                          # cipher_suites
        hello.vector(1)                          # legacy_compression_methods
        if hello.done():
            return None                          # no extensions
        extensions = hello.vector(2)
        while not extensions.done():
            kind = extensions.number(2)
            body = extensions.vector(2)
            if kind != ALPN_EXTENSION:
                continue
            names = body.vector(2)
            offered = []
            while not names.done():
                name = names.vector(1)
                offered.append(bytes(data[name.at:name.end]))
            return tuple(offered)
        return None
    except IndexError:
        return None
