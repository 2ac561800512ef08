"""Egress rules and the decisions made from them (pure: no I/O, the same code on the host and in the
gateway container).

A rule is one allow-list entry::

    pypi.org            the name pypi.org, any port
    *.example.org:443   any name under example.org (not example.org itself), port 443
    redis               a single-label name: a sidecar on one of the sandbox's networks
    10.1.2.0/24:5432    any address in 10.1.2.0/24, port 5432
    192.0.2.7           that address, any port
    [2001:db8::1]:443   an IPv6 address with a port (bare IPv6 addresses and networks need no brackets)

A name rule authorizes a *name*, and the gateway resolves it itself: every address it resolves to must
be public (or, for a single-label sidecar name, inside one of the sandbox's own networks), never the
host's. An address rule authorizes exactly the addresses it lists, whatever they are (listing
169.254.169.254 is the only way to reach it). A literal address is never authorized by a name rule.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "EGRESS_NONE",
    "EGRESS_OPEN",
    "Decision",
    "Policy",
    "Rule",
    "describe",
    "normalize_egress",
    "normalize_host_ports",
    "parse_rule",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

EGRESS_OPEN = "open"
EGRESS_NONE = "none"

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass(frozen=True)
class Rule:
    """One allow-list entry."""

    kind: Literal["name", "suffix", "network"]
    """``name``: exactly this name; ``suffix``: any name under it; ``network``: addresses."""
    value: str
    """The name, the suffix (without ``*.``), or the network in CIDR form."""
    port: int | None = None
    """The only port allowed; None for any."""

    def __str__(self) -> str:
        text = f"*.{self.value}" if self.kind == "suffix" else self.value
        if self.kind == "network":
            net = ipaddress.ip_network(self.value)
            if net.num_addresses == 1:
                text = str(net.network_address)
            if self.port is not None and net.version == 6:
                return f"[{text}]:{self.port}"
        return text if self.port is None else f"{text}:{self.port}"

    def network(self) -> IPNetwork:
        """The network of a ``network`` rule."""
        return ipaddress.ip_network(self.value)

    def port_ok(self, port: int | None) -> bool:
        """True when this rule allows ``port`` (None: the port is not known yet, e.g. a DNS query)."""
        return self.port is None or port is None or self.port == port


def _port(text: str, rule: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{rule!r}: the port must be a number from 1 to 65535")
    return int(text)


def _name(text: str, rule: str) -> str:
    name = text.rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{rule!r} is not a domain name, IP address or CIDR network")
    if labels[-1].isdigit():
        raise ValueError(f"{rule!r} looks like an IP address but is not a valid one")
    return name


def parse_rule(text: str) -> Rule:
    """One rule from its text; ValueError saying what is wrong."""
    rule = text.strip().lower()
    host, port_text = rule, ""
    if rule.startswith("["):
        host, sep, rest = rule[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6 address or network]:port")
        port_text = rest[1:]
        if rest and not port_text:
            raise ValueError(f"{text!r}: the port is missing after ':'")
    elif rule.count(":") == 1:
        host, port_text = rule.split(":")
        if not port_text:
            raise ValueError(f"{text!r}: the port is missing after ':'")
    port = _port(port_text, text) if port_text else None
    if not host:
        raise ValueError("an empty rule")
    if host == "*" or (host.startswith("*.") and host.count("*") == 1):
        if host == "*":
            raise ValueError(f"{text!r}: '*' alone is not a rule; use egress = \"open\"")
        return Rule("suffix", _name(host[2:], text), port)
    if "*" in host:
        raise ValueError(f"{text!r}: a wildcard is only allowed as a leading '*.' (e.g. *.example.org)")
    try:
        net = ipaddress.ip_network(host, strict=False)
    except ValueError:
        if "/" in host or ":" in host:
            raise ValueError(f"{text!r} is not a valid IP address or CIDR network") from None
        return Rule("name", _name(host, text), port)
    return Rule("network", str(net), port)


def normalize_egress(value: object) -> str | list[str]:
    """A configured ``egress``: ``"open"``, ``"none"``, or the list of rules in canonical form.

    Accepts a list, a JSON list, or a comma-separated string. ValueError on a bad rule.
    """
    if value is None:
        return EGRESS_OPEN
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in (EGRESS_OPEN, EGRESS_NONE, ""):
            return text.lower() or EGRESS_OPEN
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("must be open, none, or a JSON list of rules") from None
        else:
            value = [part for part in text.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be open, none, or a list of rules")
    rules: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"rules are strings, got {item!r}")
        if item.strip().lower() in (EGRESS_OPEN, EGRESS_NONE):
            raise ValueError(f"{item!r} is a whole policy, not a rule: give it alone, not in a list")
        canonical = str(parse_rule(item))
        if canonical not in rules:
            rules.append(canonical)
    return rules


def normalize_host_ports(value: object) -> list[int]:
    """A configured ``host_ports``: a list of distinct TCP ports (a list, JSON list or ``"a,b"``)."""
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("must be a list of port numbers, e.g. [11434, 8000]") from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be a list of port numbers, e.g. [11434, 8000]")
    ports: list[int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ValueError(f"{item!r} is not a port number")
        port = _port(str(item).strip(), str(item))
        if port in ports:
            raise ValueError(f"port {port} is listed twice")
        ports.append(port)
    return ports


def describe(egress: str | Sequence[str], host_ports: Sequence[int], *, network: str | None = None,
             use_host_network: bool = False) -> str:
    """The effective network policy in one sentence (``agentbox config``)."""
    if use_host_network:
        return "none: the sandbox shares the host's network (use_host_network)"
    if network == "none":
        return "no network at all: the sandbox reaches nothing (network = none)"
    ports = ", ".join(f"host.docker.internal:{p}" for p in host_ports)
    if egress == EGRESS_OPEN and not host_ports:
        return "open: the sandbox reaches whatever its networks reach (no gateway)"
    if egress == EGRESS_OPEN:
        what = "every public destination through the egress gateway's proxy"
    elif egress == EGRESS_NONE or not egress:
        what = "nothing (only agentbox reaches the runtime server)"
    else:
        what = "only " + ", ".join(egress) + " through the egress gateway's proxy (HTTP(S)_PROXY)"
    return f"{what}; everything else refused" + (f"; host ports at {ports}" if ports else "")


@dataclass(frozen=True)
class Decision:
    """Whether a connection may be made, and why (the why is logged and shown to the client)."""

    allowed: bool
    reason: str
    address: str | None = None
    """The checked address to connect to (the only one: no second lookup can rebind it)."""


def _kind_of(ip: IPAddress) -> str:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata lives here)" if str(ip).startswith("169.254.") else "link-local"
    if ip.is_private:
        return "private"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified or ip.is_reserved:
        return "reserved"
    return "non-public"


@dataclass(frozen=True)
class Policy:
    """An allow-list and what it needs to judge addresses.

    ``sidecar_networks``: subnets of the networks the sandbox reaches sidecars on; single-label names
    may resolve into them. ``host_addresses``: the host's own addresses, refused unless listed.
    """

    rules: tuple[Rule, ...] = ()
    open_public: bool = False
    """Every public destination is allowed (``egress="open"`` behind a gateway, for ``host_ports``)."""
    sidecar_networks: tuple[IPNetwork, ...] = ()
    host_addresses: frozenset[IPAddress] = field(default_factory=frozenset)

    @classmethod
    def from_texts(
        cls,
        rules: Iterable[str],
        sidecar_networks: Iterable[str] = (),
        host_addresses: Iterable[str] = (),
        *,
        open_public: bool = False,
    ) -> Policy:
        """A policy from rule texts and address texts (the gateway's command line)."""
        return cls(
            rules=tuple(parse_rule(r) for r in rules),
            open_public=open_public,
            sidecar_networks=tuple(ipaddress.ip_network(n, strict=False) for n in sidecar_networks),
            host_addresses=frozenset(ipaddress.ip_address(a) for a in host_addresses),
        )

    def name_rule(self, name: str, port: int | None) -> Rule | None:
        """The rule that lists ``name`` (on ``port``), if any."""
        name = name.lower().rstrip(".")
        if self.open_public:
            return Rule("suffix", name, None)
        for rule in self.rules:
            if not rule.port_ok(port):
                continue
            if rule.kind == "name" and rule.value == name:
                return rule
            if rule.kind == "suffix" and name.endswith("." + rule.value):
                return rule
        return None

    def address_rule(self, ip: IPAddress, port: int | None) -> Rule | None:
        """The address rule that lists ``ip`` (on ``port``), if any."""
        for rule in self.rules:
            if rule.kind == "network" and rule.port_ok(port) and ip in rule.network():
                return rule
        return None

    def check_address(self, ip: IPAddress, port: int | None, name: str | None) -> Decision:
        """May a connection go to ``ip`` (which ``name``, already allowed, resolved to; None: a literal)?"""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        rule = self.address_rule(ip, port)
        if rule is not None:
            return Decision(True, f"{ip} is listed ({rule})", str(ip))
        public = ip.is_global and not ip.is_multicast and ip not in self.host_addresses
        if name is None and self.open_public and public:
            return Decision(True, f"{ip} is public (egress is open)", str(ip))
        if name is None:
            return Decision(False, f"{ip}{'' if port is None else f':{port}'} is not in the allow-list "
                            "(a name rule never allows a literal address)")
        if ip in self.host_addresses:
            return Decision(False, f"{name} resolves to {ip}, an address of the host; list it to allow it")
        if ip.is_global and not ip.is_multicast:
            return Decision(True, f"{name} is listed", str(ip))
        if "." not in name and any(ip in net for net in self.sidecar_networks if net.version == ip.version):
            return Decision(True, f"{name} is a sidecar on the sandbox's networks", str(ip))
        return Decision(
            False, f"{name} resolves to {ip} ({_kind_of(ip)}); list the address or network to allow it"
        )

    def check_target(self, host: str, port: int) -> Decision | None:
        """Decide for a literal address at once; for a name, None if it is listed (resolve it and judge
        each address with :meth:`check_address`), else a refusal."""
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            if self.name_rule(host, port) is None:
                return Decision(False, f"{host}:{port} is not in the allow-list")
            return None
        return self.check_address(ip, port, None)

    def choose(self, name: str, port: int | None, addresses: Sequence[str]) -> Decision:
        """The first of ``addresses`` (what ``name`` resolved to) that may be reached, or why none may."""
        refusal: Decision | None = None
        for text in addresses:
            decision = self.check_address(ipaddress.ip_address(text), port, name)
            if decision.allowed:
                return decision
            refusal = refusal or decision
        return refusal or Decision(False, f"{name} does not resolve")
