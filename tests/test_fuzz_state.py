"""Header filtering as a state machine: headers arrive one by one, the invariants hold after each.

The machine builds a request (as ASGI hands it over: lower-case names, raw values), an upstream
response (names lower-cased, as `relay.py` passes them), a peer address and a trusted-proxy list,
and after every step checks what `gateway/headers.py` makes of them:

- upstream request headers: allowlisted only, never hop-by-hop, never named by `Connection`, and
  every other allowlisted header kept, in order;
- relayed response headers: never hop-by-hop or `Connection`-listed, never `set-cookie`, `server`
  or `date`; an SSE response carries `cache-control: no-cache, no-transform` and
  `x-accel-buffering: no` exactly once each and no length or encoding; the rest kept, in order;
- `X-Forwarded-*`: one of each; from an untrusted peer, exactly the peer and the real scheme.
"""

from __future__ import annotations

import ipaddress

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.headers import HOP_BY_HOP_HEADERS, Headers, connection_listed, relay_response_headers
from gateway.outbound import (
    FORWARDED_REQUEST_HEADERS,
    TrustedProxies,
    forwarded_headers,
    upstream_request_headers,
)

NEVER_RELAYED = HOP_BY_HOP_HEADERS | {b"set-cookie", b"server", b"date"}
SSE_PAIR = [(b"cache-control", b"no-cache, no-transform"), (b"x-accel-buffering", b"no")]
# A stream's Content-Encoding stays with its bytes: an encoded stream is relayed as it is, never relabelled.
SSE_REPLACED = {b"content-length", b"cache-control", b"x-accel-buffering"}
NOTABLE = sorted(
    HOP_BY_HOP_HEADERS
    | FORWARDED_REQUEST_HEADERS
    | NEVER_RELAYED
    | SSE_REPLACED
    | {b"host", b"cookie", b"authorization", b"x-user-id", b"x-request-id", b"content-type"}
    | {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-custom"}
)
TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"

names = st.sampled_from(NOTABLE) | st.binary(min_size=1, max_size=12).map(
    lambda raw: bytes(TOKEN_CHARS[byte % len(TOKEN_CHARS)] for byte in raw)
)
values = st.binary(max_size=40).map(lambda raw: bytes(b for b in raw if b not in b"\r\n\0"))
# How a `Connection` value may spell a list: any case, stray spaces and tabs, empty elements.
spellings = st.tuples(names, st.sampled_from(["lower", "upper", "title"]), st.sampled_from([b"", b" ", b"\t"]))
peers = (
    st.none()
    | st.sampled_from(["", "127.0.0.1", "10.1.2.3", "192.168.0.9", "203.0.113.7", "::1", "2001:db8::1", "fe80::1%eth0"])
    | st.ip_addresses().map(str)
    | st.text(max_size=20)
)
networks = st.lists(
    st.sampled_from(["127.0.0.0/8", "10.0.0.0/8", "::1", "2001:db8::/32", "0.0.0.0/0", "192.168.0.9"]), max_size=3
)


class HeaderFiltering(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.request: Headers = []
        self.response: Headers = []
        self.peer: str | None = None
        self.scheme = "http"
        self.trusted = TrustedProxies([])
        self.trusted_networks: list[str] = []

    @initialize(content_type=st.sampled_from([b"application/json", b"text/event-stream; charset=utf-8", b"text/html"]))
    def start_response(self, content_type: bytes) -> None:
        self.response.append((b"content-type", content_type))

    @rule(name=names, value=values)
    def client_sends(self, name: bytes, value: bytes) -> None:
        self.request.append((name, value))

    @rule(listed=st.lists(spellings, min_size=1, max_size=4), to_response=st.booleans())
    def connection_lists(self, listed: list[tuple[bytes, str, bytes]], to_response: bool) -> None:
        value = b",".join(pad + getattr(name, case)() + pad for name, case, pad in listed)
        (self.response if to_response else self.request).append((b"connection", value))

    @rule(name=names, value=values)
    def upstream_sends(self, name: bytes, value: bytes) -> None:
        self.response.append((name, value))

    @rule(peer=peers, scheme=st.sampled_from(["http", "https"]))
    def connection_from(self, peer: str | None, scheme: str) -> None:
        self.peer, self.scheme = peer, scheme

    @rule(trusted=networks)
    def trust(self, trusted: list[str]) -> None:
        self.trusted_networks = trusted
        self.trusted = TrustedProxies(trusted)

    @invariant()
    def upstream_request_is_allowlisted_and_never_hop_by_hop(self) -> None:
        out = upstream_request_headers(self.request, allow=FORWARDED_REQUEST_HEADERS)
        listed = connection_listed(self.request)
        for name, _ in out:
            assert name in FORWARDED_REQUEST_HEADERS and name not in HOP_BY_HOP_HEADERS and name not in listed
        assert out == [(n, v) for n, v in self.request if n in FORWARDED_REQUEST_HEADERS and n not in listed]

    @invariant()
    def relayed_response_loses_what_must_not_cross(self) -> None:
        for sse in (False, True):
            out = relay_response_headers(self.response, sse=sse)
            listed = connection_listed(self.response)
            if sse:
                for pair in SSE_PAIR:
                    assert out.count(pair) == 1
                    assert [n for n, _ in out].count(pair[0]) == 1
                # The pair is the gateway's own, so a `Connection` naming it does not remove it.
                out = [item for item in out if item not in SSE_PAIR]
            dropped = NEVER_RELAYED | listed | (SSE_REPLACED if sse else set())
            assert not {name for name, _ in out} & dropped
            assert out == [(n, v) for n, v in self.response if n not in dropped]

    @invariant()
    def forwarded_for_is_the_peer_unless_a_trusted_proxy_says_otherwise(self) -> None:
        out = forwarded_headers(self.request, peer=self.peer, scheme=self.scheme, trusted=self.trusted)
        found = dict(out)
        assert [name for name, _ in out].count(b"x-forwarded-for") == 1
        assert [name for name, _ in out].count(b"x-forwarded-proto") == 1
        assert [name for name, _ in out].count(b"x-forwarded-host") <= 1
        peer = (self.peer or "").encode("ascii", "replace")
        if not self._trusted_peer():
            assert found[b"x-forwarded-for"] == peer
            assert found[b"x-forwarded-proto"] == self.scheme.encode()
            host = next((value for name, value in self.request if name == b"host"), b"")
            assert found.get(b"x-forwarded-host", b"") == host
        else:
            prior = b", ".join(value for name, value in self.request if name == b"x-forwarded-for")
            assert found[b"x-forwarded-for"] == (prior + b", " + peer if prior else peer)

    @precondition(lambda self: self.peer is not None)
    @invariant()
    def trust_is_decided_by_the_configured_networks_only(self) -> None:
        assert (self.peer in self.trusted) == self._trusted_peer()

    def _trusted_peer(self) -> bool:
        """The reference answer: is the peer an IP address inside one of the trusted networks?"""
        try:
            ip = ipaddress.ip_address(self.peer or "")
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(item, strict=False) for item in self.trusted_networks)


HeaderFiltering.TestCase.settings = settings(max_examples=150, stateful_step_count=20, deadline=None)
test_header_filtering = HeaderFiltering.TestCase
