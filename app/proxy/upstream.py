"""The upstream client: one ``requests.Session`` and the connection pools its adapter holds.

The proxy uses the session at the level a proxy needs: its ``HTTPAdapter``'s pool
manager, one keep-alive pool per backend, and nothing a client library does for its own
users (STACK-FACTS 1-8):

- no cookie jar, no environment (proxies, ``.netrc``), no redirects followed;
- no headers of its own (``User-Agent``, ``Accept``, ``Accept-Encoding``);
- bodies neither decoded nor preloaded; the target is sent byte for byte.

For ``http://`` backends it takes a connection from the adapter's pool and makes the
exchange with ``app.exchange``'s lean codec (one send of a pre-built head, a small strict
response parser), which costs a fraction of ``http.client`` and the ``email`` package;
for ``https://`` backends it keeps urllib3's ``_make_request`` and its TLS handling.

It turns urllib3's exceptions into the typed errors of ``errors``, telling a failure
before anything was sent (safe to retry anywhere) from one after. It knows nothing of
WSGI or of how backends are chosen.
"""
from __future__ import annotations

import http.client
import ipaddress
import queue
import socket

import gevent
import requests
import requests.adapters
import urllib3
import urllib3.connection
from urllib3 import HTTPHeaderDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.exceptions import (ConnectTimeoutError, HTTPError, NewConnectionError,
                                ProtocolError, ReadTimeoutError, SSLError)
from urllib3.util import SKIP_HEADER
from urllib3.util.timeout import _TYPE_DEFAULT

from . import exchange
from ..config import TimeoutsConfig
from ..wire.sockets import ReadDeadline, set_timeout
from ..lb.retry import IDEMPOTENT_METHODS
from ..errors import (ClientError, UpstreamConnectError, UpstreamConnectTimeout, UpstreamError,
                     UpstreamProtocolError, UpstreamReset, UpstreamTimeout)

# Headers a client library adds unless told not to; urllib3 skips them when given SKIP_HEADER.
LIBRARY_DEFAULT_HEADERS = ("User-Agent", "Accept-Encoding")

DEFAULT_TIMEOUT = urllib3.Timeout(connect=TimeoutsConfig.connect, read=TimeoutsConfig.read)
POOL_MAXSIZE = 100          # keep-alive connections kept per backend
_READ = 1                   # libev's EV_READ, for a gevent io watcher
_PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)   # made once: enum flags cost per use


class _LiteralAddress:
    """A urllib3 connection that connects to an IP address directly.

    urllib3 looks every host up with ``getaddrinfo``, which gevent runs in its thread pool,
    an IP address too. When many new connections open at once (a burst of clients on cold
    pools) the lookups queue for that pool and for the GIL, which the busy event loop
    holds: at c=500 on a fresh start, one request in a hundred waited 1 to 2 s before
    its backend saw it. An address needs no lookup, so none is made; a host name is
    looked up as before, once per new connection.
    """

    def _new_conn(self):
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(self._dns_host).version == 6 \
                else socket.AF_INET
        except ValueError:
            return super()._new_conn()
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            for option in self.socket_options or ():
                sock.setsockopt(*option)
            timeout = self.timeout
            sock.settimeout(socket.getdefaulttimeout() if isinstance(timeout, _TYPE_DEFAULT)
                            else timeout)
            if self.source_address:
                sock.bind(self.source_address)
            sock.connect((self._dns_host, self.port))
        except socket.timeout as error:
            sock.close()
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                            f"(connect timeout={self.timeout})") from error
        except OSError as error:
            sock.close()
            raise NewConnectionError(
                self, f"Failed to establish a new connection: {error}") from error
        return sock


class _PlainConnection(_LiteralAddress, urllib3.connection.HTTPConnection):
    """A plain backend connection that watches itself while it idles in the pool.

    An idle keep-alive connection has nothing to say: if it becomes readable, the backend
    closed it (its keep-alive timeout) or sent bytes nobody asked for, and either way it
    must not carry another request. As nginx does for its idle upstream connections, a
    read watcher on the socket (one gevent ``io`` watcher per connection, started when it
    goes back to the pool, stopped when it is taken) closes it then, so taking a
    connection needs no system call to test it. The socket's own watcher and this one
    both ask for reads, so the event loop's interest in the descriptor does not change
    as a connection cycles between a request and the pool.
    """

    _idle_watcher = None
    _deadline = None

    def read_deadline(self, seconds: float | None) -> "ReadDeadline | None":
        """This connection's read timeout as one timer, for ``wait_readable`` (made again
        when a reload changes the timeout); None without a timeout."""
        if seconds is None:
            return None
        deadline = self._deadline
        if deadline is None or deadline.seconds != seconds:
            if deadline is not None:
                deadline.close()
            deadline = self._deadline = ReadDeadline(seconds)
        return deadline

    def watch_idle(self) -> None:
        """Close this connection as soon as the backend closes it or writes to it."""
        sock = self.sock
        if sock is None:
            return
        watcher = self._idle_watcher
        if watcher is None:
            watcher = self._idle_watcher = gevent.get_hub().loop.io(sock.fileno(), _READ)
        watcher.start(self._idle_ended)

    def unwatch_idle(self) -> None:
        watcher = self._idle_watcher
        if watcher is not None:
            watcher.stop()

    def _idle_ended(self) -> None:
        # In the event loop: nothing may raise out of here, and closing never blocks.
        try:
            self.close()
        except OSError:
            pass

    def close(self) -> None:
        watcher, self._idle_watcher = self._idle_watcher, None
        if watcher is not None:
            watcher.stop()       # before the descriptor is closed (and its number reused)
            watcher.close()
        deadline, self._deadline = self._deadline, None
        if deadline is not None:
            deadline.close()
        super().close()


class _TlsConnection(_LiteralAddress, urllib3.connection.HTTPSConnection):
    pass


class _NoCookies(requests.cookies.RequestsCookieJar):
    """A jar that never stores anything: a shared session must not carry one client's
    cookies to another (STACK-FACTS 1)."""

    def set_cookie(self, cookie, *args, **kwargs):
        return None

    def extract_cookies(self, response, request):
        return None


def make_session(pool_maxsize: int = POOL_MAXSIZE, pools: int = 16) -> requests.Session:
    """A ``requests.Session`` fit to be a proxy's client."""
    session = requests.Session()
    session.trust_env = False
    session.cookies = _NoCookies()
    session.headers.clear()
    session.max_redirects = 0
    adapter = requests.adapters.HTTPAdapter(pool_connections=pools, pool_maxsize=pool_maxsize,
                                            pool_block=False, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Upstream:
    """Sends one request to one backend and returns the urllib3 response, unread.

    Each call names its timeouts (the request's pool's, ``Pool.upstream_timeout``); a
    call that names none gets ``timeout`` (default: the defaults of ``timeouts``)."""

    def __init__(self, session: requests.Session | None = None,
                 timeout: urllib3.Timeout = DEFAULT_TIMEOUT):
        self.session = session or make_session()
        self.timeout = timeout
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}
        self._tls_names: dict[str, str] = {}   # origin -> the name its certificate is for

    def name_origin(self, origin: str, server_name: str) -> None:
        """Verify ``origin``'s certificate for ``server_name`` (sent as SNI too): a backend
        found through DNS is connected to by address, and its certificate names the host."""
        self._tls_names[origin] = server_name

    def pool(self, origin: str) -> urllib3.HTTPConnectionPool:
        """The keep-alive pool for ``origin`` (``scheme://host:port``), from the session's adapter."""
        pool = self._pools.get(origin)
        if pool is None or pool.pool is None:   # new, or closed by the adapter's LRU
            adapter = self.session.get_adapter(origin)
            pool_kwargs = {"cert_reqs": "CERT_REQUIRED", "ca_certs": DEFAULT_CA_BUNDLE_PATH} \
                if origin.startswith("https:") else {}
            name = self._tls_names.get(origin)
            if name and pool_kwargs:
                pool_kwargs.update(server_hostname=name, assert_hostname=name)
            pool = adapter.poolmanager.connection_from_url(origin, pool_kwargs=pool_kwargs)
            pool.ConnectionCls = _TlsConnection if pool.scheme == "https" else _PlainConnection
            self._pools[origin] = pool
        return pool

    def send(self, origin: str, method: str, target: str, headers: list, body=None,
             chunked: bool = False, timeout: urllib3.Timeout | None = None, fresh: bool = False,
             keep_alive: bool = True):
        """Send the request; return the response with its body unread and undecoded.

        ``target`` goes on the request line exactly as given: the pool's own ``urlopen``
        would re-encode it (STACK-FACTS 7), so this takes a connection and makes the one
        request itself (``app.exchange`` on plain connections, urllib3 on TLS ones).
        ``headers`` are ``(name, value)`` lines, in order (a repeated name stays separate
        lines). ``fresh`` opens a new connection instead of reusing a pooled
        one. ``keep_alive=False`` says that ``headers`` hold ``Connection: close``: the
        connection is closed after the response, whatever the backend answers (RFC 9112
        §9.6: a client that sent ``close`` sends no further request on it), never pooled.
        The caller gives the connection back with ``release_conn()``.
        Raises a subclass of ``UpstreamError``; its ``reused`` says whether the failure
        was on a pooled keep-alive connection.
        """
        pool = self.pool(origin)
        plain = pool.scheme == "http"
        # A pooled connection the backend closed is dropped here. (With TLS, bytes waiting
        # may be a session ticket, so urllib3's own test stays.)
        # The idle watcher hears of a backend's close at the event loop's next turn; a
        # request that could not be sent again on a fresh connection (a POST, a body)
        # also peeks, so it never lands on a connection closed a moment ago.
        conn = _checkout(pool, peek=body is not None or method not in IDEMPOTENT_METHODS) \
            if plain else pool._get_conn()
        if fresh:
            conn.close()
        reused = conn.sock is not None
        timeout = timeout or self.timeout
        if plain:
            return self._exchange(pool, conn, reused, method, target, headers, body, chunked,
                                  timeout, keep_alive)
        # https: http.client and urllib3's TLS handling, as before.
        headers = HTTPHeaderDict(headers)
        for name in LIBRARY_DEFAULT_HEADERS:
            if name not in headers:
                headers[name] = SKIP_HEADER
        # http.client encodes the request line as ASCII; the target is the client's bytes
        # decoded as latin-1 (raw UTF-8 included), so it goes back out as latin-1.
        conn._encode_request = _latin1
        try:
            response = pool._make_request(
                conn, method, target, body=body, headers=headers, retries=None,
                timeout=timeout, chunked=chunked, response_conn=conn,
                preload_content=False, decode_content=False)
        except Exception as error:  # noqa: BLE001 - every failure becomes a typed error
            failure = _failed(pool, conn, reused, error)
            if failure is error:
                raise
            raise failure from error
        except BaseException:
            # The request was abandoned mid-exchange (the client left, or a kill): the
            # connection is in an unknown state, so it is closed, never pooled.
            conn.close()
            pool._put_conn(conn)
            raise
        response.header_lines = list(response.headers.iteritems())
        return response

    @staticmethod
    def _exchange(pool, conn, reused: bool, method: str, target: str, headers, body,
                  chunked: bool, timeout: urllib3.Timeout,
                  keep_alive: bool = True) -> exchange.Response:
        """The request and response on a plain connection, with ``app.exchange``'s codec."""
        head = exchange.build_head(method, target, headers, chunked, body is not None)

        def release(keep: bool) -> None:
            if not (keep and keep_alive):
                conn.close()
                pool._put_conn(conn)
                return
            conn.watch_idle()
            pool._put_conn(conn)     # closes it when the pool is full (or closed)

        try:
            if conn.sock is None:
                conn.timeout = timeout.connect_timeout
                conn.connect()
            sock = conn.sock
            seconds = timeout.read_timeout
            set_timeout(sock, seconds)
            exchange.send_request(sock, head, body, chunked)
            return exchange.Response(sock, method, release, conn.read_deadline(seconds))
        except Exception as error:  # noqa: BLE001 - every failure becomes a typed error
            failure = _failed(pool, conn, reused, error)
            if failure is error:
                raise
            raise failure from error
        except BaseException:
            # The request was abandoned mid-exchange (the client left, or a kill): the
            # connection is in an unknown state, so it is closed, never pooled.
            conn.close()
            pool._put_conn(conn)
            raise

    def forget(self, origin: str) -> None:
        """Close the idle connections to an origin no backend uses any more (after a reload).

        Connections still carrying a response are closed when it ends, not before.
        """
        pool = self._pools.pop(origin, None)
        self._tls_names.pop(origin, None)
        if pool is None:
            return
        pools = self.session.get_adapter(origin).poolmanager.pools
        for key in pools.keys():
            if pools[key] is pool:
                del pools[key]   # the pool manager closes the pool as it lets it go

    def close(self) -> None:
        self.session.close()
        self._pools.clear()


def _checkout(pool, peek: bool = False):
    """``pool._get_conn()`` without urllib3's test that a pooled connection is still open
    (a ``poll``, 8 % of the CPU per request): a plain connection watched itself while it
    was idle (``_PlainConnection.watch_idle``) and was closed if the backend closed it or
    sent bytes, so what comes out of the pool open is clean. With ``peek``, also one
    non-blocking peek at the socket, for what the watcher has not been told yet."""
    connections = pool.pool
    if connections is None:
        return pool._get_conn()     # closed: urllib3 raises its error
    try:
        conn = connections.get(block=False)
    except queue.Empty:
        conn = None
    if conn is None:
        return pool._new_conn()
    conn.unwatch_idle()
    sock = conn.sock
    if peek and sock is not None:
        try:
            getattr(sock, "_sock", sock).recv(1, _PEEK_NOW)
        except BlockingIOError:
            return conn             # open, and nothing unasked-for waiting: reusable
        except OSError:
            pass
        conn.close()
    return conn


def _failed(pool, conn, reused: bool, error: BaseException) -> BaseException:
    """Close and give back the connection; the typed error to raise (a client's own error,
    from reading its body, passes through: it is not the backend's)."""
    conn.close()
    pool._put_conn(conn)
    if isinstance(error, ClientError):
        return error
    failure = classify(error)
    failure.reused = reused
    return failure


def _latin1(request: str) -> bytes:
    return request.encode("latin-1")


def classify(error: BaseException) -> UpstreamError:
    """Map an exception from urllib3 or the socket layer to a typed upstream error."""
    if isinstance(error, UpstreamError):
        return error
    if isinstance(error, NewConnectionError):
        cause = error.__context__ or error
        return UpstreamConnectError(f"connection failed: {_reason(cause)}")
    if isinstance(error, ConnectTimeoutError):
        return UpstreamConnectTimeout("connect timed out")
    if isinstance(error, (ReadTimeoutError, socket.timeout, TimeoutError)):
        return UpstreamTimeout("read timed out")
    if isinstance(error, SSLError):
        return UpstreamProtocolError(f"TLS error: {_reason(error)}")
    if isinstance(error, ProtocolError):
        cause = error.args[1] if len(error.args) > 1 else error
        if isinstance(cause, (ConnectionResetError, BrokenPipeError,
                              http.client.RemoteDisconnected)):
            return UpstreamReset(f"connection reset: {_reason(cause)}")
        if isinstance(cause, http.client.IncompleteRead):
            return UpstreamReset("the response body ended early")
        return UpstreamProtocolError(f"invalid response: {_reason(cause)}")
    if isinstance(error, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return UpstreamReset(f"connection reset: {_reason(error)}")
    if isinstance(error, (http.client.HTTPException, HTTPError)):
        return UpstreamProtocolError(f"invalid response: {_reason(error)}")
    if isinstance(error, OSError):
        return UpstreamReset(f"connection error: {_reason(error)}")
    return UpstreamProtocolError(f"{type(error).__name__}: {error}")


def _reason(error: BaseException) -> str:
    if isinstance(error, NewConnectionError):
        error = error.__context__ or error
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    text = str(error) or type(error).__name__
    return text[:200]
