"""app.http1's pure functions, with plain asserts; the wire tests cover the same rules end to end."""
from io import BytesIO

import pytest

from app.wire import http1
from app.errors import BadRequest, HeadersTooLarge, MethodNotAllowed, UriTooLong


def test_request_line_keeps_the_target_bytes():
    line = http1.parse_request_line(b"GET /caf\xc3\xa9%zz?a=%2F HTTP/1.1")
    assert (line.method, line.target.encode("latin-1"), line.version) == (
        "GET", b"/caf\xc3\xa9%zz?a=%2F", "HTTP/1.1")


@pytest.mark.parametrize("line", [b"GET  / HTTP/1.1", b"GET / HTTP/1.1 x", b"G@T / HTTP/1.1",
                                  b"GET /\x7f HTTP/1.1", b"GET / HTTP/1.10", b"GET /"],
                         ids=["double-space", "extra-word", "bad-method", "del-in-target",
                              "bad-version", "no-version"])
def test_malformed_request_lines_are_400(line):
    with pytest.raises(BadRequest):
        http1.parse_request_line(line)


@pytest.mark.parametrize("line,expected", [
    (b"Name: value", ("Name", "value")), (b"Name:\t value \t", ("Name", "value")),
    (b"X-Empty:", ("X-Empty", "")), (b"X-Obs: caf\xe9", ("X-Obs", "caf\xe9")),
])
def test_field_lines(line, expected):
    assert http1.parse_field_line(line) == expected


@pytest.mark.parametrize("line", [b" folded", b"Name : v", b"Na me: v", b": v", b"NoColon",
                                  b"Name: a\rb", b"Name: a\x00b"],
                         ids=["obs-fold", "space-before-colon", "space-in-name", "empty-name",
                              "no-colon", "bare-cr", "nul"])
def test_malformed_field_lines_are_400(line):
    with pytest.raises(BadRequest):
        http1.parse_field_line(line)


def test_framing():
    assert http1.body_framing([("Content-Length", "12")], "HTTP/1.1") == http1.Framing(length=12)
    assert http1.body_framing([("transfer-encoding", "Chunked")], "HTTP/1.1").chunked
    assert not http1.body_framing([], "HTTP/1.1").has_body


@pytest.mark.parametrize("fields", [
    [("Content-Length", "1"), ("Transfer-Encoding", "chunked")],
    [("Content-Length", "1"), ("Content-Length", "1")], [("Content-Length", "+1")],
    [("Content-Length", "１")], [("Transfer-Encoding", "gzip, chunked")],
    [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
], ids=["cl-and-te", "repeated-cl", "signed-cl", "non-ascii-digit", "te-list", "repeated-te"])
def test_ambiguous_framing_is_400(fields):
    with pytest.raises(BadRequest):
        http1.body_framing(fields, "HTTP/1.1")


@pytest.mark.parametrize("method,target,expected", [
    ("GET", "/a?b", ("/a?b", None)), ("GET", "//h/p", ("//h/p", None)),
    ("OPTIONS", "*", ("*", None)), ("GET", "http://h:1", ("/", "h:1")),
    ("GET", "HTTPS://h/x?y", ("/x?y", "h")), ("GET", "http://h?q", ("/?q", "h")),
])
def test_origin_form(method, target, expected):
    assert http1.origin_form(method, target) == expected


@pytest.mark.parametrize("method,target,error", [
    ("CONNECT", "h:443", MethodNotAllowed), ("GET", "h:443", BadRequest),
    ("GET", "@h/", BadRequest), ("GET", "http://u@h/", BadRequest),
    ("GET", "ftp://h/", BadRequest), ("GET", "*", BadRequest), ("GET", "http:///x", BadRequest),
])
def test_targets_that_could_reach_another_host_are_refused(method, target, error):
    with pytest.raises(error):
        http1.origin_form(method, target)


def test_read_head_counts_the_request_line_and_fields_against_the_limit():
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
    assert http1.read_head(BytesIO(head), len(head)).fields == (("Host", "h"), ("X-A", "1"))
    with pytest.raises(HeadersTooLarge):
        http1.read_head(BytesIO(head), len(head) - 1)
    with pytest.raises(UriTooLong):
        http1.read_head(BytesIO(head), 10)


def test_read_head_skips_one_empty_line_and_needs_host():
    assert http1.read_head(BytesIO(b"\r\nGET / HTTP/1.0\r\n\r\n"), 1000).request.version == "HTTP/1.0"
    with pytest.raises(BadRequest):
        http1.read_head(BytesIO(b"GET / HTTP/1.1\r\n\r\n"), 1000)


def test_read_head_skips_empty_lines_within_a_bound():
    assert http1.read_head(BytesIO(b"\r\n" * 5 + b"GET /x HTTP/1.0\r\n\r\n"),
                           1000).request.target == "/x"
    many = b"\r\n" * (http1.MAX_EMPTY_LINES_BYTES // 2 + 1)
    with pytest.raises(BadRequest, match="empty lines"):
        http1.read_head(BytesIO(many + b"GET / HTTP/1.0\r\n\r\n"), 1000)


def test_read_head_of_a_closed_connection_is_incomplete():
    with pytest.raises(http1.Incomplete):
        http1.read_head(BytesIO(b"GET / HTTP/1.1\r\nHost: h\r\n"), 1000)


def test_chunked_reader_decodes_and_drops_trailers():
    reader = http1.ChunkedReader(BytesIO(b"5;a=\"q\"\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\nNEXT"))
    assert b"".join(iter(lambda: reader.read(3), b"")) == b"hello!"
    assert reader.done


@pytest.mark.parametrize("body", [b"zz\r\n", b"5\r\nhelloXX", b"5\nhello\r\n", b" 5\r\nhello\r\n",
                                  b"5;\r\nhello\r\n", b"0\r\nBad Trailer\r\n\r\n"],
                         ids=["not-hex", "no-crlf-after-data", "bare-lf", "leading-space",
                              "empty-extension", "bad-trailer"])
def test_invalid_chunks_are_400(body):
    reader = http1.ChunkedReader(BytesIO(body))
    with pytest.raises(BadRequest):
        while reader.read(100):
            pass


HEADS = [
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n",
    b"POST /p?q HTTP/1.0\r\nContent-Length: 3\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\nHost: h\r\n\r\n",                       # bare LF ends the request line
    b"GET / HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n",                # bare LF in the fields
    b"GET / HTTP/1.1\r\nHost: h\rX: 1\r\n\r\n",                # bare CR
    b"GET / HTTP/1.1\r\n\r\n",                                 # no Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",  # request line over 8 KiB
    b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 200 + b"\r\n\r\n",   # over the head limit
    b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: 1\r\n" * 100 + b"\r\n",   # over 100 lines
    b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost:h\r\nX-Ows: \t a \t b\t \r\nX-Empty:\r\nX-Obs: \xe9\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n" + b"X: 1\r\n" * 99 + b"\r\n",     # 100 lines
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a" + b" " * 7000 + b"\x00\r\n\r\n",  # no backtracking
    b"GET / HTTP/1.1\r\nHost: h\r\nX : 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
]


@pytest.mark.parametrize("data", HEADS, ids=range(len(HEADS)))
def test_a_head_parsed_whole_is_read_as_line_by_line(data):
    def outcome(parse):
        try:
            head = parse()
        except Exception as error:  # noqa: BLE001 - the error is the outcome compared
            return type(error)
        return head
    limit = 16 * 1024 if len(data) > 1000 or data.count(b"\r\n") > 50 else 120
    whole = outcome(lambda: http1.parse_head(data, limit))
    assert whole == outcome(lambda: http1.read_head(BytesIO(data), limit))


def test_connection_never_makes_framing_or_host_hop_by_hop():
    tokens = http1.list_tokens("Content-Length, Host, Transfer-Encoding, X-Hop, close")
    assert http1.hop_by_hop(tokens) == {"x-hop", "close"}
    assert http1.hop_by_hop(frozenset({"keep-alive"})) == {"keep-alive"}


def test_connection_tokens_gather_every_connection_line_lower_cased():
    fields = [("Connection", "keep-alive, X-Private"), ("Host", "h"), ("connection", " ,Upgrade,")]
    assert http1.connection_tokens(fields) == {"keep-alive", "x-private", "upgrade"}
    assert http1.list_tokens("") == frozenset()


VALID_HOSTS = ["example.com", "example.com:8080", "[::1]:8080", "[::1]", "127.0.0.1",
               "127.0.0.1:80", "EXAMPLE.com.", "xn--caf-dma.example", "%41b.example",
               "a-b_c~d!$&'()*+,;=", "[v1.fe80::a+en1]", "[::ffff:1.2.3.4]", "host:", ""]
INVALID_HOSTS = ["a b", "user@example.com", "[::1", "::1]", "::1", "example.com:80a",
                 "example.com:80:80", "host/path", "host?q", "host#frag", "[::1]x",
                 "[fe80::1%25eth0]", "[1.2.3]", "[g::1]", "caf\xc3\xa9.example", "h\\x",
                 "a\tb", "%zz.example", '"quoted"', "<h>"]


@pytest.mark.parametrize("host", VALID_HOSTS, ids=lambda h: repr(h))
def test_valid_hosts_pass(host):
    http1.check_host([("Host", host)], "HTTP/1.1")


@pytest.mark.parametrize("host", INVALID_HOSTS, ids=lambda h: repr(h))
def test_invalid_hosts_are_400(host):
    with pytest.raises(BadRequest, match="invalid Host header"):
        http1.check_host([("Host", host)], "HTTP/1.1")


@pytest.mark.parametrize("target", ["http://[::1/", "http://h:8x/", "http://a%zz/", "http://h^/"],
                         ids=["unclosed-bracket", "bad-port", "bad-pct", "caret"])
def test_an_invalid_absolute_form_authority_is_400(target):
    with pytest.raises(BadRequest, match="invalid authority"):
        http1.origin_form("GET", target)


def test_a_valid_absolute_form_authority_names_the_host():
    assert http1.origin_form("GET", "http://[::1]:8080/x") == ("/x", "[::1]:8080")


@pytest.mark.parametrize("method,status,has_body", [
    ("GET", 200, True), ("HEAD", 200, False), ("GET", 101, False), ("GET", 100, False),
    ("GET", 204, False), ("GET", 304, False), ("POST", 404, True), ("GET", 205, True)],
    ids=["get-200", "head", "101", "100", "204", "304", "post-404", "205"])
def test_which_responses_have_a_body(method, status, has_body):
    assert http1.response_has_body(method, status) is has_body


@pytest.mark.parametrize("line,size", [
    (b"5", 5), (b"1aF", 0x1AF), (b"5;ext", 5), (b'5 ; a="q \\" x"', 5), (b"0", 0),
    (b"", None), (b"zz", None), (b"5 ", None), (b"-5", None), (b"f" * 17, None), (b"5;", None),
    (b"0" * 40 + b"5", 5), (b"0" * 40, 0), (b"0" * 20 + b"f" * 16, 2 ** 64 - 1),
    (b"0" * 20 + b"1" + b"0" * 16, None)],
    ids=["digit", "hex", "ext", "quoted-ext", "last", "empty", "not-hex", "trailing-space",
         "negative", "overflow", "empty-ext", "zero-padded", "zero-padded-last",
         "padded-16-digits", "padded-17-digits"])
def test_chunk_size_lines(line, size):
    assert http1.chunk_size(line) == size


def test_a_chunk_and_the_last_chunk_on_the_wire():
    assert http1.encode_chunk(b"hello") + http1.LAST_CHUNK == b"5\r\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize("http10,tokens,persists", [
    (False, set(), True), (False, {"close"}, False), (True, set(), False),
    (True, {"keep-alive"}, True), (False, {"keep-alive", "x-private"}, True)],
    ids=["1.1", "1.1-close", "1.0", "1.0-keep-alive", "1.1-other-tokens"])
def test_whether_a_connection_persists(http10, tokens, persists):
    assert http1.persists(http10, frozenset(tokens)) is persists


@pytest.mark.parametrize("value, host", [
    ("shop.test", "shop.test"), ("shop.test:8443", "shop.test"), ("10.0.0.1:80", "10.0.0.1"),
    ("[::1]:8443", "[::1]"), ("[::1]", "[::1]"), ("", ""), ("shop.test:", "shop.test"),
    ("a b", None), ("user@shop.test", None), ("[::1", None), ("[zz::1]", None),
    ("shop.test:80:80", None), ("shop.test/x", None),
])
def test_host_name_is_the_one_host_grammar_without_the_port(value, host):
    assert http1.host_name(value) == host


def test_a_request_head_gathers_its_connection_tokens_and_100_continue():
    head = http1.parse_head(b"POST / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-A\r\n"
                            b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n", 4096)
    assert head.connection == {"keep-alive", "x-a"}
    assert head.expects_continue and head.framing == http1.Framing(length=3)
    bodiless = http1.parse_head(b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n", 4096)
    assert not bodiless.expects_continue and bodiless.connection == frozenset()


@pytest.mark.parametrize("method,status,version,fields,expected", [
    ("GET", 200, b"HTTP/1.1", [("Content-Length", "5")], (True, False, 5, True)),
    ("HEAD", 200, b"HTTP/1.1", [("Content-Length", "5")], (False, False, 0, True)),
    ("GET", 204, b"HTTP/1.1", [], (False, False, 0, True)),
    ("GET", 304, b"HTTP/1.1", [("Content-Length", "9")], (False, False, 0, True)),
    ("GET", 101, b"HTTP/1.1", [("Connection", "Upgrade")], (False, False, 0, False)),
    ("GET", 200, b"HTTP/1.1", [("Transfer-Encoding", "chunked")], (True, True, None, True)),
    ("GET", 200, b"HTTP/1.1", [("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
     (True, True, None, False)),
    ("GET", 200, b"HTTP/1.1", [("Transfer-Encoding", "gzip")], (True, False, None, False)),
    ("GET", 200, b"HTTP/1.1", [], (True, False, None, False)),            # to the end
    ("GET", 200, b"HTTP/1.1", [("Connection", "close"), ("Content-Length", "1")],
     (True, False, 1, False)),
    ("GET", 200, b"HTTP/1.0", [("Content-Length", "1")], (True, False, 1, False)),
    ("GET", 200, b"HTTP/1.0", [("Connection", "Keep-Alive"), ("Content-Length", "1")],
     (True, False, 1, True)),
], ids=["length", "head", "204", "304", "101", "chunked", "chunked-and-length", "gzip-only",
        "to-the-end", "close", "1.0", "1.0-keep-alive"])
def test_response_framing(method, status, version, fields, expected):
    framing = http1.response_framing(method, status, version, fields)
    assert (framing.has_body, framing.chunked, framing.length, framing.keep) == expected


@pytest.mark.parametrize("lengths", [["5", "6"], ["x"], ["-1"]])
def test_a_response_with_a_bad_content_length_is_a_protocol_error(lengths):
    from app.errors import UpstreamProtocolError
    with pytest.raises(UpstreamProtocolError):
        http1.response_framing("GET", 200, b"HTTP/1.1", [("Content-Length", v) for v in lengths])
