"""Allow-list rules and the decisions made from them (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from agentbox.netpolicy.gateway import dns_reply, parse_query, parse_sni
from agentbox.netpolicy.rules import Policy, normalize_egress, normalize_host_ports, parse_rule


@pytest.mark.parametrize(
    ("text", "kind", "value", "port", "canonical"),
    [
        ("PyPI.org", "name", "pypi.org", None, "pypi.org"),
        ("*.example.org:443", "suffix", "example.org", 443, "*.example.org:443"),
        ("redis", "name", "redis", None, "redis"),
        ("10.1.2.0/24:5432", "network", "10.1.2.0/24", 5432, "10.1.2.0/24:5432"),
        ("192.0.2.7", "network", "192.0.2.7/32", None, "192.0.2.7"),
        ("[2001:db8::1]:443", "network", "2001:db8::1/128", 443, "[2001:db8::1]:443"),
        ("2001:db8::/32", "network", "2001:db8::/32", None, "2001:db8::/32"),
    ],
)
def test_rules_parse_to_a_canonical_form(text: str, kind: str, value: str, port: int | None, canonical: str) -> None:
    rule = parse_rule(text)
    assert (rule.kind, rule.value, rule.port, str(rule)) == (kind, value, port, canonical)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*", "use egress"),
        ("a.*.org", "leading"),
        ("pypi.org:0", "port"),
        ("pypi.org:", "missing"),
        ("10.1.2.300", "IP address"),
        ("10.0.0.0/33", "CIDR"),
        ("bad_name!", "not a domain"),
    ],
)
def test_bad_rules_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rule(text)


def test_egress_accepts_open_none_json_and_commas() -> None:
    assert normalize_egress(None) == "open"
    assert normalize_egress(" NONE ") == "none"
    assert normalize_egress('["pypi.org", "PYPI.org"]') == ["pypi.org"]
    assert normalize_egress("pypi.org, 10.0.0.0/8:5432") == ["pypi.org", "10.0.0.0/8:5432"]
    with pytest.raises(ValueError, match="whole policy"):
        normalize_egress(["none", "pypi.org"])


def test_host_ports_parse_and_refuse_duplicates() -> None:
    assert normalize_host_ports("11434, 8000") == [11434, 8000]
    assert normalize_host_ports("[80]") == [80]
    with pytest.raises(ValueError, match="twice"):
        normalize_host_ports([80, 80])
    with pytest.raises(ValueError, match="1 to 65535"):
        normalize_host_ports([70000])


POLICY = Policy.from_texts(
    ["pypi.org", "*.example.org:443", "redis", "10.1.2.0/24:5432", "169.254.169.254:80"],
    sidecar_networks=["172.30.0.0/16"],
    host_addresses=["203.0.113.9"],
)


def test_names_match_exactly_or_by_suffix_and_port() -> None:
    assert POLICY.name_rule("PYPI.ORG.", 443) is not None
    assert POLICY.name_rule("a.b.example.org", 443) is not None
    assert POLICY.name_rule("example.org", 443) is None  # *.suffix is strictly below the suffix
    assert POLICY.name_rule("a.example.org", 80) is None
    assert POLICY.check_target("evil.test", 443) is not None
    assert POLICY.check_target("pypi.org", 443) is None  # listed: resolve, then judge each address


@pytest.mark.parametrize(
    ("address", "name", "port", "allowed"),
    [
        ("151.101.0.223", "pypi.org", 443, True),
        ("10.0.0.5", "pypi.org", 443, False),  # a listed name resolving to a private address
        ("127.0.0.1", "pypi.org", 443, False),
        ("169.254.169.254", "pypi.org", 80, True),  # ...unless the address itself is listed
        ("169.254.169.254", "pypi.org", 443, False),
        ("203.0.113.9", "pypi.org", 443, False),  # the host's own address
        ("172.30.0.4", "redis", 6379, True),  # a sidecar name on the sandbox's networks
        ("172.30.0.4", "pypi.org", 443, False),  # a dotted name may not rebind into them
        ("151.101.0.223", None, 443, False),  # a literal address needs an address rule
        ("10.1.2.3", None, 5432, True),
        ("10.1.2.3", None, 5433, False),
        ("::ffff:10.1.2.3", None, 5432, True),
    ],
)
def test_addresses_are_judged(address: str, name: str | None, port: int, allowed: bool) -> None:
    assert POLICY.check_address(ipaddress.ip_address(address), port, name).allowed is allowed


def test_choose_takes_the_first_allowed_address_and_says_why_not() -> None:
    assert POLICY.choose("pypi.org", 443, ["10.0.0.1", "151.101.0.223"]).address == "151.101.0.223"
    refused = POLICY.choose("pypi.org", 443, ["10.0.0.1"])
    assert not refused.allowed and "private" in refused.reason
    assert "does not resolve" in POLICY.choose("pypi.org", 443, []).reason


def test_open_public_allows_public_destinations_only() -> None:
    policy = Policy.from_texts([], host_addresses=["203.0.113.9"], open_public=True)
    assert policy.check_address(ipaddress.ip_address("151.101.0.223"), 443, None).allowed
    assert not policy.check_address(ipaddress.ip_address("169.254.169.254"), 80, None).allowed
    assert not policy.check_address(ipaddress.ip_address("203.0.113.9"), 22, None).allowed
    assert not policy.choose("any.test", 443, ["192.168.1.1"]).allowed


def test_sni_is_read_from_a_client_hello() -> None:
    import ssl

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="Files.Example.org")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    assert parse_sni(outgoing.read()) == "files.example.org"
    assert parse_sni(b"\x16\x03\x01\x00\x05\x02") is None


def test_dns_query_and_reply_round_trip() -> None:
    query = bytes.fromhex("1234 0100 0001 0000 0000 0000") + b"\x04pypi\x03org\x00" + b"\x00\x01\x00\x01"
    assert parse_query(query) == ("pypi.org", 1, len(query))
    reply = dns_reply(query, len(query), 0, ["151.101.0.223"])
    assert reply[:2] == b"\x12\x34" and reply[7] == 1 and reply.endswith(bytes([151, 101, 0, 223]))
    assert dns_reply(query, len(query), 5, [])[3] & 0x0F == 5


def test_describe_says_the_effective_policy() -> None:
    from agentbox.netpolicy.rules import describe

    assert describe("open", []).startswith("open")
    assert describe("none", [11434]) == (
        "nothing (only agentbox reaches the runtime server); everything else refused; "
        "host ports at host.docker.internal:11434"
    )
    assert "only pypi.org" in describe(["pypi.org"], [])
    assert describe(["pypi.org"], [], network="none").startswith("no network")
