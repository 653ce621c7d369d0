import ipaddress

import pytest

from trainer.outbound.policy import OutboundPolicy, OutboundPolicyError

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "198.18.0.1",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "::127.0.0.1",  # IPv4-compatible
    "2001:db8::1",
]
ALLOWED = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("address", REFUSED)
def test_production_policy_refuses_non_public_addresses(address):
    policy = OutboundPolicy()
    assert policy.address_refusal(address, host="tools.example.com") is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_production_policy_allows_public_addresses(address):
    assert OutboundPolicy().is_address_allowed(address, host="tools.example.com")


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_dev_mode_allows_loopback_only(address):
    policy = OutboundPolicy(allow_loopback=True)
    assert policy.is_address_allowed(address)
    assert not policy.is_address_allowed("10.0.0.1")
    assert not policy.is_address_allowed("169.254.169.254")


def test_allowlisted_cidr_and_hosts():
    policy = OutboundPolicy(allowlist=("10.20.0.0/16", "tools.internal", "*.corp.example"))
    assert policy.is_address_allowed("10.20.3.4", host="x.example.com")
    assert policy.is_address_allowed("::ffff:10.20.3.4")
    assert not policy.is_address_allowed("10.21.0.1", host="x.example.com")
    assert policy.is_address_allowed("192.168.0.5", host="tools.internal")
    assert policy.is_address_allowed("192.168.0.5", host="TOOLS.internal.")
    assert policy.is_address_allowed("192.168.0.5", host="a.b.corp.example")
    assert not policy.is_address_allowed("192.168.0.5", host="corp.example.evil.com")


def test_reason_names_the_embedded_address():
    reason = OutboundPolicy().address_refusal(ipaddress.ip_address("::ffff:169.254.169.254"))
    assert reason is not None and "169.254.169.254" in reason


@pytest.mark.parametrize("entry", ["not a host", "http://x/y", "*.", "a/b"])
def test_bad_allowlist_entries_are_rejected(entry):
    with pytest.raises(OutboundPolicyError):
        OutboundPolicy(allowlist=(entry,))


def test_policy_from_settings(settings):
    from experiments.outbound import policy_from_settings

    settings.RFT_OUTBOUND_ALLOW_LOOPBACK = False
    settings.RFT_OUTBOUND_ALLOWLIST = ["10.20.0.0/16", "tools.internal"]
    policy = policy_from_settings()
    assert not policy.allow_loopback
    assert policy.is_address_allowed("10.20.1.1") and not policy.is_address_allowed("127.0.0.1")
    assert policy.host_is_allowlisted("tools.internal")
    settings.RFT_OUTBOUND_ALLOW_LOOPBACK = True
    settings.RFT_OUTBOUND_ALLOWLIST = "10.0.0.0/8, 192.168.0.0/16"
    policy = policy_from_settings()
    assert policy.is_address_allowed("127.0.0.1") and policy.is_address_allowed("192.168.3.3")
