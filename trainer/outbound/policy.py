"""Which addresses rftweb may call: the SSRF policy for every outbound request.

Users type the URLs of tools, endpoint graders and model judges, and the server calls them. Without a
policy that turns the server into a proxy into its own network (cloud metadata at 169.254.169.254,
databases on 10.x, the admin port on 127.0.0.1). The check is made on the *resolved* IP address at
connect time (see `client.py`), never on the URL text alone: names can resolve anywhere, and IP
literals can be spelled in many ways.

Refused unless allowed: loopback, RFC 1918, link-local (incl. cloud metadata), CGNAT, multicast,
reserved, "this network" 0.0.0.0/8, broadcast, documentation/benchmark ranges, and the IPv6
equivalents (::1, ::, fc00::/7, fe80::/10, fec0::/10, multicast). Addresses that embed an IPv4 address
(IPv4-mapped ::ffff:0:0/96, NAT64 64:ff9b::/96, 6to4 2002::/16, IPv4-compatible ::/96) are judged by
the embedded address; Teredo (2001::/32) is refused because its real destination is obscured.

An administrator may allow host names (exact, or "*.example.com" for subdomains) and CIDRs; the
embedded/dev mode allows loopback so the bundled demo servers work.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_REFUSED_V4 = tuple(
    ipaddress.IPv4Network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches localhost on Linux
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # CGNAT shared address space
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast 255.255.255.255
    )
)
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(cidr)
    for cidr in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "100::/64",  # discard-only
        "2001:db8::/32",  # documentation
        "2001:10::/28",  # ORCHID
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.IPv6Network("::1/128")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TEREDO = ipaddress.IPv6Network("2001::/32")


class OutboundPolicyError(ValueError):
    """An allowlist entry that is neither a host name nor a CIDR."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a translated/tunnelled IPv6 address really reaches, if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why an address is not publicly routable (None when it is), ignoring any allowlist."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (link-local) IPv6 address"
        inner = embedded_ipv4(address)
        if inner is not None:
            inner_reason = refusal_reason(inner)
            return f"embeds {inner} ({inner_reason})" if inner_reason else None
        if address in _TEREDO:
            return "a Teredo tunnel address"
        for network in _REFUSED_V6:
            if address in network:
                return f"in the non-public range {network}"
        if not address.is_global:
            return "not a global address"
        return None
    for network in _REFUSED_V4:
        if address in network:
            return f"in the non-public range {network}"
    if not address.is_global:
        return "not a global address"
    return None


def is_loopback(address: IPAddress) -> bool:
    """Loopback, also when spelled as an IPv4-mapped/compatible IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOOPBACK_V6:
            return True
        inner = embedded_ipv4(address)
        return inner is not None and inner in _LOOPBACK_V4
    return address in _LOOPBACK_V4


def _parse_allowlist(
    entries: tuple[str, ...],
) -> tuple[frozenset[str], tuple[str, ...], tuple[IPNetwork, ...]]:
    hosts: set[str] = set()
    suffixes: list[str] = []
    networks: list[IPNetwork] = []
    for raw in entries:
        entry = str(raw).strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        if entry.startswith("*."):
            suffix = entry[1:]  # ".example.com"
            if len(suffix) < 3 or "/" in suffix or ":" in suffix:
                raise OutboundPolicyError(f"not a host name or CIDR: {raw!r}")
            suffixes.append(suffix)
            continue
        if "/" in entry or ":" in entry or " " in entry:
            raise OutboundPolicyError(f"not a host name or CIDR: {raw!r}")
        hosts.add(entry.rstrip("."))
    return frozenset(hosts), tuple(suffixes), tuple(networks)


@dataclass(frozen=True)
class OutboundPolicy:
    """The outbound rules. The default (production) refuses every non-public address.

    `allow_loopback` is the embedded/dev mode (the bundled demo servers listen on 127.0.0.1).
    `allowlist` holds host names ("tools.internal", "*.corp.example") and CIDRs ("10.20.0.0/16")
    that an administrator trusts; a listed host name may resolve to any address.
    """

    allow_loopback: bool = False
    allowlist: tuple[str, ...] = ()
    _hosts: frozenset[str] = field(init=False, repr=False, compare=False)
    _suffixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        allowlist = (self.allowlist,) if isinstance(self.allowlist, str) else tuple(self.allowlist)
        hosts, suffixes, networks = _parse_allowlist(allowlist)
        object.__setattr__(self, "allowlist", allowlist)
        object.__setattr__(self, "_hosts", hosts)
        object.__setattr__(self, "_suffixes", suffixes)
        object.__setattr__(self, "_networks", networks)

    def host_is_allowlisted(self, host: str) -> bool:
        name = host.strip().lower().rstrip(".")
        return name in self._hosts or any(name.endswith(suffix) for suffix in self._suffixes)

    def address_refusal(self, address: str | IPAddress, *, host: str = "") -> str | None:
        """None when `address` (reached for the name `host`) may be called, else the reason."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if host and self.host_is_allowlisted(host):
            return None
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and (inner := embedded_ipv4(ip)) is not None:
            candidates.append(inner)
        if any(candidate in network for candidate in candidates for network in self._networks):
            return None
        if self.allow_loopback and is_loopback(ip):
            return None
        return refusal_reason(ip)

    def is_address_allowed(self, address: str | IPAddress, *, host: str = "") -> bool:
        return self.address_refusal(address, host=host) is None
