"""MyProxy's transport: the adapter the upstream ``requests.Session`` sends through, and
the keep-alive connections it owns.

The upstream is a ``requests.Session`` (the user's choice) with ``Transport`` mounted for
``http://`` and ``https://`` (``Session.mount``, requests' documented extension point), so
nothing of urllib3 or ``http.client`` carries a request. It is a proxy's client, not a
library's (STACK-FACTS 1-11): no cookies, no environment, no redirects, no headers of its
own, bodies neither decoded nor preloaded, the target sent byte for byte.

- ``OriginPool`` keeps the idle keep-alive connections to one origin, newest first; a
  plain one watches itself while idle and closes when the backend closes it or writes.
- ``Transport.exchange`` is the proxy's call (the hot path): one request and its
  response head on a pooled or fresh connection, through ``exchange``'s codec;
  ``Transport.send`` serves whoever uses the session the requests way.
- ``classify`` turns every failure into the typed errors of ``errors``, in this one place,
  telling a failure before anything was sent (safe to retry anywhere) from one after.

It knows nothing of WSGI or of how backends are chosen.
"""
from __future__ import annotations

import ipaddress
import socket
import ssl
from collections import deque
from typing import Callable
from urllib.parse import urlsplit

import gevent
import requests
import requests.adapters
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from . import exchange
from ..config import TimeoutsConfig
from ..errors import (ClientError, UpstreamConnectError, UpstreamConnectTimeout, UpstreamError,
                      UpstreamProtocolError, UpstreamReset, UpstreamTimeout)
from ..lb.retry import IDEMPOTENT_METHODS
from ..wire.gevent_adapter import ReadDeadline

POOL_MAXSIZE = 100          # idle keep-alive connections kept per origin
_READ = 1                   # libev's EV_READ, for a gevent io watcher
_PEEK = socket.MSG_PEEK


class Connection:
    """One connection to a backend: its socket (TLS or not) and, while idle in its pool,
    the watcher that closes it when the backend closes it or writes.

    An idle keep-alive connection has nothing to say: if it becomes readable, the backend
    closed it (its keep-alive timeout) or sent bytes nobody asked for, and either way it
    must not carry another request. As nginx does for its idle upstream connections, a
    read watcher (one gevent ``io`` watcher per connection, started when it goes back to
    the pool, stopped when it is taken) closes it then, so taking one needs no system
    call. A TLS connection is not watched (a TLS 1.3 session ticket makes it readable);
    it is tested when taken instead (``clean``).
    """

    __slots__ = ("sock", "tls", "_watcher", "_deadline")

    def __init__(self, sock, tls: bool):
        self.sock = sock
        self.tls = tls
        self._watcher = None
        self._deadline: ReadDeadline | None = None

    def read_deadline(self, seconds: float | None) -> ReadDeadline | None:
        """This connection's read timeout as one timer, for the wait for a response head
        (made again when a reload changes the timeout); None without a timeout, or for
        TLS, whose socket may hold decrypted bytes its descriptor does not show."""
        if seconds is None or self.tls:
            return None
        deadline = self._deadline
        if deadline is None or deadline.seconds != seconds:
            if deadline is not None:
                deadline.close()
            deadline = self._deadline = ReadDeadline(seconds)
        return deadline

    def watch_idle(self) -> None:
        if self.tls or self.sock is None:
            return
        watcher = self._watcher
        if watcher is None:
            watcher = self._watcher = gevent.get_hub().loop.io(self.sock.fileno(), _READ)
        watcher.start(self._idle_ended)

    def unwatch_idle(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    def _idle_ended(self) -> None:
        # In the event loop: nothing may raise out of here, and closing never blocks.
        try:
            self.close()
        except OSError:
            pass

    def clean(self) -> bool:
        """Whether the connection is still open with nothing unasked-for to read: one
        non-blocking read (a peek, for plain TCP)."""
        sock = self.sock
        timeout = sock.timeout
        sock.settimeout(0.0)
        try:
            if self.tls:
                sock.recv(1)          # a session ticket is taken in; data or EOF is not clean
            else:
                sock.recv(1, _PEEK)
            return False
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            return False
        finally:
            if self.sock is not None:
                sock.settimeout(timeout)

    def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()       # before the descriptor is closed (and its number reused)
            watcher.close()
        deadline, self._deadline = self._deadline, None
        if deadline is not None:
            deadline.close()
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


class OriginPool:
    """The idle keep-alive connections to one origin (``scheme://host:port``), at most
    ``maxsize``, and how a new one is opened: to an IP address without a lookup (gevent
    runs each in its thread pool, and a burst of them stalled new connections for
    seconds, STACK-FACTS 28); over TLS verified for ``server_name`` (the URL's host, or
    the name a DNS member's certificate is for), which is also the SNI sent."""

    def __init__(self, origin: str, maxsize: int, ssl_context: Callable[[], ssl.SSLContext],
                 server_name: str | None = None):
        parts = urlsplit(origin)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.server_name = server_name or self.host
        self.maxsize = maxsize
        self.closed = False
        self._ssl_context = ssl_context
        self._idle: deque[Connection] = deque()
        try:
            self._family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 \
                else socket.AF_INET
        except ValueError:
            self._family = None         # a name: looked up for each new connection

    @property
    def idle(self) -> list[Connection]:
        """The connections waiting in the pool, newest last (closed ones not yet dropped)."""
        return list(self._idle)

    def take(self, peek: bool = False) -> Connection | None:
        """The newest idle connection still open (with ``peek``, also tested at once: a
        request that cannot go again on a fresh connection must not land on one the
        backend closed a moment ago), or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            conn.unwatch_idle()
            if conn.sock is None:
                continue                # closed by its watcher while idle
            if (peek or conn.tls) and not conn.clean():
                conn.close()
                continue
            return conn
        return None

    def give(self, conn: Connection) -> None:
        """Keep ``conn`` for the next request, or close it when the pool is full or gone."""
        if self.closed or conn.sock is None or len(self._idle) >= self.maxsize:
            conn.close()
            return
        conn.watch_idle()
        self._idle.append(conn)

    def connect(self, timeout: float | None) -> Connection:
        """A new connection. Raises ``UpstreamConnectError`` or ``UpstreamConnectTimeout``."""
        try:
            if self._family is None:
                addresses = [(family, address) for family, _, _, _, address in socket.getaddrinfo(
                    self.host, self.port, 0, socket.SOCK_STREAM)]
            else:
                addresses = [(self._family, (self.host, self.port))]
            sock = _connect(addresses, timeout)
        except socket.timeout:
            raise UpstreamConnectTimeout("connect timed out") from None
        except OSError as error:
            raise UpstreamConnectError(f"connection failed: {_reason(error)}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.tls:
            return Connection(sock, False)
        try:
            return Connection(self._ssl_context().wrap_socket(
                sock, server_hostname=self.server_name), True)
        except socket.timeout:
            sock.close()
            raise UpstreamConnectTimeout("TLS handshake timed out") from None
        except OSError as error:          # ssl.SSLError (certificates), resets
            sock.close()
            raise UpstreamConnectError(f"TLS handshake failed: {_reason(error)}") from None

    def close(self) -> None:
        self.closed = True
        while self._idle:
            self._idle.pop().close()


class Transport(requests.adapters.BaseAdapter):
    """The session's adapter: a pool per origin, and HTTP/1.1 through ``exchange``.

    ``timeouts`` (``connect``, ``read``) are those a call that names none gets;
    ``ssl_context`` verifies ``https://`` backends (default: the CA bundle requests ships).
    """

    def __init__(self, pool_maxsize: int = POOL_MAXSIZE, timeouts=TimeoutsConfig(),
                 ssl_context: ssl.SSLContext | None = None):
        super().__init__()
        self.pool_maxsize = pool_maxsize
        self.timeouts = timeouts
        self._ssl_context = ssl_context
        self._pools: dict[str, OriginPool] = {}
        self._names: dict[str, str] = {}     # origin -> the name its certificate is for

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context(cafile=DEFAULT_CA_BUNDLE_PATH)
        return self._ssl_context

    def name_origin(self, origin: str, server_name: str) -> None:
        """Verify ``origin``'s certificate for ``server_name`` (sent as SNI too): a backend
        found through DNS is connected to by address, and its certificate names the host."""
        if self._names.get(origin) != server_name:
            self._names[origin] = server_name
            self.forget(origin, keep_name=True)

    def pool(self, origin: str) -> OriginPool:
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = OriginPool(origin, self.pool_maxsize,
                                                    lambda: self.ssl_context,
                                                    self._names.get(origin))
        return pool

    def open(self, origin: str, timeout: float | None) -> Connection:
        """A fresh connection to ``origin``, never pooled (an upgrade's)."""
        return self.pool(origin).connect(timeout)

    def exchange(self, origin: str, method: str, target: str, headers: list, body=None,
                 chunked: bool = False, timeout=None, fresh: bool = False,
                 keep_alive: bool = True) -> exchange.Response:
        """Send the request; return the response with its body unread and undecoded.

        ``target`` goes on the request line exactly as given; ``headers`` are ``(name,
        value)`` lines, in order. ``timeout`` has ``connect`` and ``read`` (a pool's
        ``timeouts``). ``fresh`` opens a new connection instead of taking a pooled one.
        ``keep_alive=False`` says ``headers`` hold ``Connection: close``: the connection
        is closed after the response, never pooled (RFC 9112 §9.6). The caller gives the
        connection back with ``release_conn()``. Raises a subclass of ``UpstreamError``
        (its ``reused`` says whether it was a pooled connection), or the ``ClientError``
        that reading the client's body raised.
        """
        timeout = timeout or self.timeouts
        pool = self.pool(origin)
        conn = None if fresh else pool.take(
            peek=body is not None or method not in IDEMPOTENT_METHODS)
        reused = conn is not None

        def release(keep: bool) -> None:
            if keep and keep_alive:
                pool.give(conn)
            else:
                conn.close()

        try:
            if conn is None:
                conn = pool.connect(timeout.connect)
            seconds = timeout.read
            deadline = conn.read_deadline(seconds)
            exchange.send_request(conn.sock, method, target, headers, body, chunked, seconds)
            return exchange.Response(conn.sock, method, release, deadline)
        except Exception as error:  # noqa: BLE001 - every failure becomes a typed error
            if conn is not None:
                conn.close()
            if isinstance(error, ClientError):
                raise               # reading the client's body failed: not the backend's
            failure = classify(error)
            failure.reused = reused
            if failure is error:
                raise
            raise failure from error
        except BaseException:
            # Abandoned mid-exchange (the client left, or a kill): the connection is in an
            # unknown state, so it is closed, never pooled.
            if conn is not None:
                conn.close()
            raise

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        """requests' adapter call, for whoever uses the session the requests way: the
        prepared request goes out as it is (its URL's path and query as the target), and
        the answer comes back as a ``requests.Response`` whose body is read from the
        connection as it is asked for."""
        parts = urlsplit(request.url)
        origin = f"{parts.scheme}://{parts.netloc}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = list(request.headers.items())
        if not any(name.lower() == "host" for name, _ in headers):
            headers.insert(0, ("Host", parts.netloc))
        body = request.body
        if isinstance(body, str):
            body = body.encode("utf-8")
        if isinstance(body, bytes):
            if not any(name.lower() == "content-length" for name, _ in headers):
                headers.append(("Content-Length", str(len(body))))
            body = [body]
        if isinstance(timeout, tuple):
            timeout = TimeoutsConfig(connect=timeout[0], read=timeout[1])
        elif timeout is not None:
            timeout = TimeoutsConfig(connect=timeout, read=timeout)
        answer = self.exchange(origin, request.method, target, headers, body, timeout=timeout)
        response = requests.Response()
        response.status_code = answer.status
        response.reason = answer.reason
        response.headers = CaseInsensitiveDict(answer.header_lines)
        response.raw = _Body(answer)
        response.url = request.url
        response.request = request
        response.connection = self
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        if not stream:
            response.content            # read it all now, as requests does
        return response

    def forget(self, origin: str, keep_name: bool = False) -> None:
        """Close the idle connections to an origin no backend uses any more (after a
        reload). Connections still carrying a response are closed when it ends."""
        pool = self._pools.pop(origin, None)
        if not keep_name:
            self._names.pop(origin, None)
        if pool is not None:
            pool.close()

    def close(self) -> None:
        for origin in list(self._pools):
            self.forget(origin)


class _Body:
    """A response body as requests reads it (``raw.read``), from ``exchange.Response``."""

    def __init__(self, response: exchange.Response):
        self._response = response

    def read(self, amt=None, decode_content=None) -> bytes:
        if amt is not None:
            return self._response.read1(amt)
        return b"".join(iter(lambda: self._response.read1(exchange.READ_SIZE), b""))

    def close(self) -> None:
        self._response.close()

    def release_conn(self) -> None:
        self._response.release_conn()


class Upstream:
    """The upstream client the proxy and the health checks use: a ``requests.Session``
    made for a proxy (``make_session``) and its ``Transport``, whose ``exchange`` is
    ``send``. A session without MyProxy's transport mounted is refused."""

    def __init__(self, session: requests.Session | None = None, timeout=TimeoutsConfig()):
        self.session = session or make_session(timeouts=timeout)
        transport = self.session.get_adapter("http://")
        if not isinstance(transport, Transport):
            raise TypeError("the upstream session needs MyProxy's Transport mounted "
                            "(app.proxy.transport.make_session)")
        self.transport = transport
        self.send = transport.exchange
        self.pool = transport.pool
        self.name_origin = transport.name_origin
        self.forget = transport.forget

    def close(self) -> None:
        self.session.close()


class _NoCookies(requests.cookies.RequestsCookieJar):
    """A jar that never stores anything: a shared session must not carry one client's
    cookies to another (STACK-FACTS 1)."""

    def set_cookie(self, cookie, *args, **kwargs):
        return None

    def extract_cookies(self, response, request):
        return None


def make_session(pool_maxsize: int = POOL_MAXSIZE, timeouts=TimeoutsConfig(),
                 pools: int = 0) -> requests.Session:
    """A ``requests.Session`` fit to be a proxy's client, with ``Transport`` mounted.
    (``pools`` is kept for callers that sized urllib3's pool manager: a Transport keeps
    a pool per origin, as many as there are.)"""
    session = requests.Session()
    session.trust_env = False
    session.cookies = _NoCookies()
    session.headers.clear()
    session.max_redirects = 0
    transport = Transport(pool_maxsize, timeouts)
    session.mount("http://", transport)
    session.mount("https://", transport)
    return session


def _connect(addresses, timeout: float | None):
    """A socket connected to the first of ``addresses`` (``(family, address)``) that
    accepts; the last failure if none does."""
    failure: OSError = OSError("no address")
    for family, address in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except socket.timeout:
            sock.close()
            raise
        except OSError as error:
            sock.close()
            failure = error
        except BaseException:
            sock.close()
            raise
    raise failure


def classify(error: BaseException) -> UpstreamError:
    """Map a failure on a backend connection to a typed upstream error."""
    if isinstance(error, UpstreamError):
        return error
    if isinstance(error, (socket.timeout, TimeoutError)):
        return UpstreamTimeout("read timed out")
    if isinstance(error, ssl.SSLError):
        return UpstreamProtocolError(f"TLS error: {_reason(error)}")
    if isinstance(error, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return UpstreamReset(f"connection reset: {_reason(error)}")
    if isinstance(error, OSError):
        return UpstreamReset(f"connection error: {_reason(error)}")
    return UpstreamProtocolError(f"{type(error).__name__}: {error}")


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    text = str(error) or type(error).__name__
    return text[:200]
