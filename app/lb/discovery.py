"""DNS discovery: the members of a pool's backend entries that name a host or an SRV service.

One ``Discovery`` per balancer. Its entries are the balancer's ``templates``
(``BackendConfig.discovered``): ``url`` + ``resolve`` (every A and AAAA address of the
URL's host is a member on the URL's port) or ``srv`` (each SRV record's target, port and
weight is one; records of a worse priority are backups, RFC 2782). ``resolve_once`` looks
every entry up once and hands each answer to ``Balancer.update_members``, the one place
membership changes; it is what tests call. ``start`` runs it in a greenlet, each entry
again after its ``resolve`` interval (or its records' TTL, if shorter; at least
``MIN_RESOLVE``), spread by ±``JITTER``. ``resolve_at_start`` is the bounded first round
before serving; ``prepare`` resolves a reload's new entries before the reload is applied.

What a lookup may change (a pool never empties because DNS hiccuped):

- an answer with addresses replaces the members (those that stay keep their state);
- a failure (timeout, SERVFAIL, REFUSED) or an answer with no address keeps the last set;
  when only one of the A and AAAA questions fails, the other's addresses are taken and the
  members of the failed family stay. Each change of a name's state (``OK``, ``PARTIAL``,
  ``DOWN``) is logged once, with its cause;
- NXDOMAIN drains the members of a name only on the second answer in a row that says so.

Lookups go through dnspython over gevent-patched sockets (UDP, TCP on truncation), never
``getaddrinfo``: gevent runs that in a small thread pool, where a slow name stalls every
lookup behind it (STACK-FACTS 28). dnspython imports ``ssl``, so this module is imported
only by the composition root, after gevent's patching (STACK-FACTS 12). It knows nothing
of how requests are proxied: what to do with members that come and go (check them, close
their connections, forget their metrics) is the ``on_added`` and ``on_removed`` hooks'.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import urlsplit

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import gevent
from gevent.event import Event

from ..config import MIN_RESOLVE, BackendConfig, ResolverConfig
from ..errors import StartupError
from ..logs import Fields
from .balancer import Backend, Balancer, Endpoint

log = logging.getLogger("myproxy.discovery")

JITTER = 0.1          # each lookup runs up to 10% of its interval early or late
SWEEP_INTERVAL = 1.0  # seconds between looks at leaving members' in-flight requests
NXDOMAIN_TO_DRAIN = 2  # consecutive NXDOMAIN answers that drain a name's members


# The states of a name's lookups; each change of state is logged once.
OK = "ok"              # every question answered
PARTIAL = "partial"    # some answered, some failed (dnsmasq refusing AAAA): members from both
DOWN = "down"          # no usable answer: the last members stay


class LookupFailed(Exception):
    """No usable answer (timeout, SERVFAIL, no address): the last members stay."""


class NameNotFound(LookupFailed):
    """NXDOMAIN: the name does not exist (``NXDOMAIN_TO_DRAIN`` in a row drain it)."""


@dataclass(frozen=True)
class Answer:
    """What one lookup found: the endpoints, the shortest TTL, and who answered."""

    endpoints: tuple[Endpoint, ...]
    ttl: float
    server: str
    # (host, IP version) whose lookup failed while the rest answered (an AAAA refused, say):
    # the members of those stay as they were; ``cause`` says why.
    partial: tuple[tuple[str, int], ...] = ()
    cause: str = ""


@dataclass
class _Entry:
    """What discovery remembers of one entry between lookups."""

    template: BackendConfig
    due: float = 0.0                  # monotonic time of the next lookup
    state: str = OK                   # OK, PARTIAL or DOWN: each change of it is logged once
    not_found: int = 0                # NXDOMAIN answers in a row
    answer: Answer | None = None      # the last good answer
    answered_at: float | None = None  # wall-clock time of it
    error: str = ""                   # the last lookup's failure, "" after an answer
    partial: str = ""                 # why the last answer lacks a family, "" if it does not
    resolved: int = 0                 # lookups made


def make_resolver(config: ResolverConfig) -> dns.resolver.Resolver:
    """A dnspython resolver for ``resolver:``: its servers in order (each gets an equal
    share of ``timeout``), or the system's ``/etc/resolv.conf`` when none is given."""
    if config.servers:
        resolver = dns.resolver.Resolver(configure=False)
        nameservers = []
        for server in config.servers:
            host, _, port = server.rpartition(":")
            nameservers.append(dns.nameserver.Do53Nameserver(host.strip("[]"), int(port)))
        resolver.nameservers = nameservers
    else:
        resolver = dns.resolver.Resolver()
    resolver.rotate = False
    resolver.lifetime = config.timeout
    resolver.timeout = config.timeout / max(1, len(resolver.nameservers))
    return resolver


def describe_servers(resolver: dns.resolver.Resolver) -> str:
    return ", ".join(f"{ns.address}:{ns.port}" if hasattr(ns, "port") else str(ns)
                     for ns in resolver.nameservers) or "none in /etc/resolv.conf"


def lookup(template: BackendConfig, resolver: dns.resolver.Resolver) -> Answer:
    """Resolve one entry. Raises ``NameNotFound`` or ``LookupFailed`` with the cause."""
    if template.srv:
        return _lookup_srv(template, resolver)
    parts = urlsplit(template.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses, ttl, server, failed, cause = _addresses(parts.hostname, resolver)
    if not addresses:
        raise LookupFailed(f"{parts.hostname} has no A or AAAA record (via {server})")
    return Answer(tuple(Endpoint(address, port, parts.hostname, template.weight)
                        for address in addresses), ttl, server,
                  tuple((parts.hostname, version) for version in failed), cause)


def _addresses(name: str, resolver: dns.resolver.Resolver):
    """The A and AAAA addresses of ``name`` (asked at once): (addresses, the shortest TTL,
    the server, the IP versions whose question failed while the other answered, why).

    Raises ``NameNotFound`` when both say NXDOMAIN, ``LookupFailed`` when a question
    failed and the other gave no address."""
    kinds = (("A", 4), ("AAAA", 6))
    outcomes = _at_once([(_query, name, kind, resolver) for kind, _ in kinds])
    answered = [o for o in outcomes if not isinstance(o, LookupFailed)]
    hard = [(version, o) for (_, version), o in zip(kinds, outcomes)
            if isinstance(o, LookupFailed) and not isinstance(o, NameNotFound)]
    if not answered:
        raise hard[0][1] if hard else outcomes[0]
    addresses, ttls = [], []
    for rrset, _, _ in answered:
        if rrset is not None:
            addresses += [record.address for record in rrset]
            ttls.append(float(rrset.ttl))
    if hard and not addresses:
        raise hard[0][1]
    return (addresses, min(ttls, default=0.0), answered[0][1], [v for v, _ in hard],
            str(hard[0][1]) if hard else "")


def _query(name: str, kind: str, resolver: dns.resolver.Resolver):
    """One question: (the answer's rrset or None, who answered, the whole response).
    Raises ``NameNotFound`` or ``LookupFailed``."""
    try:
        answer = resolver.resolve(name, kind, search=True, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        raise NameNotFound(f"{name} does not exist (NXDOMAIN from "
                           f"{describe_servers(resolver)})") from None
    except dns.resolver.LifetimeTimeout:
        raise LookupFailed(f"no answer for {name} {kind} within {resolver.lifetime:g}s "
                           f"from {describe_servers(resolver)}") from None
    except dns.resolver.NoNameservers as error:
        raise LookupFailed(f"{name} {kind}: {_first_line(error)}") from None
    except dns.exception.DNSException as error:
        raise LookupFailed(f"{name} {kind}: {_first_line(error)} "
                           f"(servers: {describe_servers(resolver)})") from None
    return answer.rrset, f"{answer.nameserver}:{answer.port}", answer.response


def _lookup_srv(template: BackendConfig, resolver: dns.resolver.Resolver) -> Answer:
    """The SRV records of the entry, each target's addresses from the additional section
    or else looked up; priority below the best makes a backup (RFC 2782)."""
    rrset, server, response = _query(template.srv, "SRV", resolver)
    records = [r for r in (rrset or []) if r.target != dns.name.root]   # "." = no service
    if not records:
        raise LookupFailed(f"{template.srv} has no SRV record with a target (via {server})")
    ttls = [float(rrset.ttl)]
    glue: dict[dns.name.Name, list[str]] = {}   # addresses the server sent along (Consul does)
    for extra in response.additional:
        if extra.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            glue.setdefault(extra.name, []).extend(record.address for record in extra)
            ttls.append(float(extra.ttl))
    best = min(r.priority for r in records)
    targets = list(dict.fromkeys(r.target for r in records))
    missing = [target for target in targets if target not in glue]
    outcomes = _at_once([(_addresses, target.to_text(omit_final_dot=True), resolver)
                         for target in missing])
    partial, causes = [], []
    for target, outcome in zip(missing, outcomes):
        if isinstance(outcome, NameNotFound):
            glue[target] = []        # a target that is gone is no member
        elif isinstance(outcome, LookupFailed):
            raise outcome
        else:
            glue[target], target_ttl, _, failed, cause = outcome
            if glue[target]:
                ttls.append(target_ttl)
            partial += [(target.to_text(omit_final_dot=True), version) for version in failed]
            causes += [cause] if cause else []
    endpoints = tuple(
        Endpoint(address, record.port, record.target.to_text(omit_final_dot=True),
                 # Weight 0 is the RFC's "very small chance": the smallest weight here.
                 max(record.weight, 1), record.priority > best)
        for record in records for address in glue[record.target])
    if not endpoints:
        raise LookupFailed(f"no address for the targets of {template.srv} (via {server})")
    return Answer(endpoints, min(ttls), server, tuple(partial), "; ".join(causes))


def _at_once(calls: list[tuple]) -> list:
    """Run each ``(function, *args)`` in a greenlet; each one's value, or the
    ``LookupFailed`` it raised (returned, not raised, so gevent prints no traceback)."""
    def outcome(function, *args):
        try:
            return function(*args)
        except LookupFailed as failure:
            return failure
    jobs = [gevent.spawn(outcome, *call) for call in calls]
    gevent.joinall(jobs)
    return [job.value if job.successful() else LookupFailed(
        f"the lookup failed: {_first_line(job.exception)}") for job in jobs]


def _version(address: str) -> int:
    return 6 if ":" in address else 4


def _where(member: Backend) -> str:
    """The address part of a member's name: ``127.0.0.2``, ``[::1]:8001``."""
    return member.url.rpartition(" (")[2].rstrip(")")


def _first_line(error: Exception) -> str:
    return (str(error) or type(error).__name__).splitlines()[0][:300]


class Discovery:
    """Keeps ``balancer``'s DNS-found members current (see the module docstring).

    ``resolver`` returns the ``resolver:`` settings in force; ``on_added`` gets the new
    members of each change (check them now), ``on_removed`` the members dropped once
    their in-flight requests were done (close their connections).
    """

    def __init__(self, balancer: Balancer, resolver: Callable[[], ResolverConfig],
                 on_added: Callable[[list[Backend]], None] | None = None,
                 on_removed: Callable[[list[Backend]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.balancer = balancer
        self._resolver_config = resolver
        self._on_added = on_added
        self._on_removed = on_removed
        self._clock = clock
        self._rng = rng or random.Random()
        self._entries: dict[str, _Entry] = {}
        self._resolver: tuple[ResolverConfig, dns.resolver.Resolver] | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._wake = Event()

    def follow(self, balancer: Balancer, resolver: Callable[[], ResolverConfig]) -> None:
        """Feed ``balancer`` from now on (a reload's successor of the pool's balancer),
        with the lookups' state kept: what was found, when, and each outage."""
        self.balancer = balancer
        self._resolver_config = resolver

    @property
    def resolver(self) -> dns.resolver.Resolver:
        config = self._resolver_config()
        if self._resolver is None or self._resolver[0] != config:
            self._resolver = (config, make_resolver(config))
        return self._resolver[1]

    @property
    def entries(self) -> list[_Entry]:
        """One per entry of the balancer, in its order (state kept across lookups)."""
        templates = self.balancer.templates
        for url in list(self._entries):
            if url not in templates:
                del self._entries[url]
        for url, template in templates.items():
            entry = self._entries.get(url)
            if entry is None or entry.template != template:
                self._entries[url] = _Entry(template) if entry is None \
                    else _Entry(template, state=entry.state, answer=entry.answer)
        return [self._entries[url] for url in templates]

    # --- rounds --------------------------------------------------------------------------

    def resolve_once(self, due_only: bool = False) -> None:
        """Look every entry up (only those due, for the loop), at once, and apply the
        answers; then drop the leaving members that have finished."""
        now = self._clock()
        entries = [e for e in self.entries if not due_only or e.due <= now]
        if entries:
            self._apply_all(entries, self._lookup_all(entries))
        self.sweep()

    def resolve_at_start(self) -> None:
        """The first round, before serving: bounded by ``resolver.timeout``. Raises
        ``StartupError`` naming the names, their causes and the servers when the pool has
        no member at all after it (some names failing while others answered is logged)."""
        entries = self.entries
        if not entries:
            return
        results = self._lookup_all(entries)
        self._apply_all(entries, results)
        if not self.balancer.backends:
            raise StartupError("no backend could be found through DNS within "
                               f"resolver.timeout ({self._resolver_config().timeout:g}s): "
                               + "; ".join(f"{e.template.url}: {e.error}" for e in entries))

    def prepare(self, templates: Sequence[BackendConfig]) -> list[tuple[BackendConfig, Answer]]:
        """For a reload: look up at once the entries that are new or whose ``resolve``
        changed (``url`` holds the name and port), before the new config is applied, so
        that they have members from its first request. ``apply_prepared`` applies them."""
        known = self.balancer.templates
        fresh = [t for t in templates if t.discovered and known.get(t.url) != t]
        entries = [_Entry(t) for t in fresh]
        results = self._lookup_all(entries)
        return [(e.template, r) for e, r in zip(entries, results) if isinstance(r, Answer)]

    def apply_prepared(self, prepared: list[tuple[BackendConfig, Answer]]) -> None:
        """Apply ``prepare``'s answers (after ``Balancer.reload``): no I/O, no yield."""
        for template, answer in prepared:
            entry = next((e for e in self.entries if e.template == template), None)
            if entry is not None:
                self._apply(entry, answer)

    def _lookup_all(self, entries: list[_Entry]) -> list:
        # dnspython gives up at resolver.lifetime (an SRV's targets take a second one).
        try:
            resolver = self.resolver
        except dns.exception.DNSException as error:     # no usable /etc/resolv.conf
            return [LookupFailed(f"no DNS server to ask: {_first_line(error)}")] * len(entries)
        return _at_once([(lookup, e.template, resolver) for e in entries])

    def _apply_all(self, entries: list[_Entry], results: list) -> None:
        for entry, result in zip(entries, results):
            try:
                self._apply(entry, result)
            except Exception:  # noqa: BLE001 - one entry's trouble must not stop the others
                log.exception("applying the DNS answer for %s failed", entry.template.url)

    def _apply(self, entry: _Entry, result) -> None:
        """One lookup's outcome: the members it changes, what is logged, the next lookup."""
        template = entry.template
        entry.resolved += 1
        ttl = result.ttl if isinstance(result, Answer) else template.resolve   # TTL 0: 1 s
        interval = min(template.resolve, ttl) * self._rng.uniform(1 - JITTER, 1 + JITTER)
        entry.due = self._clock() + max(MIN_RESOLVE, interval)
        if isinstance(result, Answer):
            self._answered(entry, result)
            entry.not_found, entry.error, entry.partial = 0, "", result.cause
            entry.answer, entry.answered_at = result, time.time()
            self._update(template, self._with_unanswered(template, result), result.server)
            return
        entry.error = str(result)
        had_members = bool(self.balancer.members(template.url))
        if isinstance(result, NameNotFound) and had_members:
            entry.not_found += 1
            if entry.not_found >= NXDOMAIN_TO_DRAIN:
                log.warning(Fields("DNS name gone: its members are drained", backend=template.url,
                                   cause=entry.error, answers=entry.not_found))
                entry.state, entry.answer = DOWN, None
                self._update(template, (), "")
            else:
                log.warning(Fields("DNS name not found; its members stay unless the next "
                                   "answer says so too", backend=template.url, cause=entry.error))
            return
        entry.not_found = 0
        if entry.state != DOWN:
            entry.state = DOWN
            log.warning(Fields("DNS lookup failed; the last members stay" if had_members
                               else "DNS lookup failed; no member yet", backend=template.url,
                               cause=entry.error, members=len(self.balancer.members(template.url))))

    def _answered(self, entry: _Entry, answer: Answer) -> None:
        """Log the change of state an answer makes, once: a partial failure (one family's
        question failed), a recovery from an outage (in part, or whole)."""
        state = PARTIAL if answer.cause else OK
        before, entry.state = entry.state, state
        if state == before:
            return
        backend = entry.template.url
        if state == PARTIAL and before == OK:
            log.warning(Fields("DNS lookup partly failed; the members it could not answer for "
                               "stay", backend=backend, cause=answer.cause))
        elif state == PARTIAL:
            log.info(Fields("DNS answers again, in part; the members it could not answer for "
                            "stay", backend=backend, server=answer.server,
                            addresses=len(answer.endpoints), cause=answer.cause))
        else:
            log.info(Fields("DNS answers again", backend=backend, server=answer.server,
                            addresses=len(answer.endpoints)))

    def _with_unanswered(self, template: BackendConfig, answer: Answer) -> list[Endpoint]:
        """The answer's endpoints, and the current members' of the hosts and IP versions
        it could not get (a failed question keeps what it last said)."""
        endpoints = list(answer.endpoints)
        if answer.partial:
            found = {e.key for e in endpoints}
            endpoints += [m.endpoint for m in self.balancer.members(template.url)
                          if (m.endpoint.host, _version(m.endpoint.address)) in answer.partial
                          and m.endpoint.key not in found]
        return endpoints

    def _update(self, template: BackendConfig, endpoints, server: str) -> None:
        added, gone = self.balancer.update_members(template, endpoints)
        if added or gone:
            log.info(Fields("DNS members changed", backend=template.url,
                            added=",".join(map(_where, added)) or None,
                            leaving=",".join(map(_where, gone)) or None,
                            members=len(self.balancer.members(template.url)), server=server or None))
        if added and self._on_added is not None:
            self._on_added(added)

    def sweep(self) -> list[Backend]:
        """Drop the leaving members whose in-flight requests are done; return them."""
        done = self.balancer.sweep()
        if done and self._on_removed is not None:
            self._on_removed(done)
        return done

    # --- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        """Run lookups in a background greenlet while the balancer has DNS entries."""
        if self._greenlet is None and self.balancer.templates:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop the loop; safe to call twice."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=1)

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._greenlet is not None and not self._greenlet.dead

    def _run(self) -> None:
        while True:
            try:
                self.resolve_once(due_only=True)
            except Exception:  # noqa: BLE001 - a background loop never dies silently
                log.exception("DNS discovery round failed; retrying")
                gevent.sleep(MIN_RESOLVE)
            self._wake.wait(self.next_delay())
            self._wake.clear()

    def next_delay(self) -> float:
        """Seconds to the next lookup due, or to the next look at leaving members."""
        now = self._clock()
        delay = min((e.due - now for e in self.entries), default=60.0)
        if self.balancer.leaving:
            delay = min(delay, SWEEP_INTERVAL)
        return max(0.0, delay)

    # --- for /status and --check --probe ------------------------------------------------

    def describe_servers(self) -> str:
        return describe_servers(self.resolver)

    def describe(self) -> list[dict]:
        """Per entry: what it looks up, the members found, when, via whom, the last error."""
        now = self._clock()
        return [{
            "backend": e.template.url,
            "name": e.template.srv or urlsplit(e.template.url).hostname,
            "type": "SRV" if e.template.srv else "A/AAAA",
            "resolve_seconds": e.template.resolve,
            "members": [b.url for b in self.balancer.members(e.template.url)],
            "answered_at": round(e.answered_at, 3) if e.answered_at else None,
            "ttl_seconds": e.answer.ttl if e.answer else None,
            "server": e.answer.server if e.answer else None,
            "next_in_seconds": round(max(0.0, e.due - now), 1) if e.resolved else 0.0,
            "error": e.error,        # no usable answer: the last members stay
            "partial": e.partial,    # answered, but a family's question failed
        } for e in self.entries]
