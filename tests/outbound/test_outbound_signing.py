import hashlib
import hmac

from trainer.outbound.signing import sign_body, verify_signature


def test_signature_matches_the_documented_construction():
    header = sign_body(secret="s3cret", body=b'{"a": 1}', timestamp=1700000000)
    expected = hmac.new(b"s3cret", b'1700000000.{"a": 1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature(secret="s3cret", body=b'{"a": 1}', header=header, now=1700000010)


def test_tampering_wrong_secret_and_replays_are_rejected():
    header = sign_body(secret="s3cret", body=b"body", timestamp=1700000000)
    assert not verify_signature(secret="s3cret", body=b"body!", header=header, now=1700000000)
    assert not verify_signature(secret="other", body=b"body", header=header, now=1700000000)
    assert not verify_signature(secret="s3cret", body=b"body", header=header, now=1700000000 + 3600)
    assert verify_signature(secret="s3cret", body=b"body", header=header, tolerance_s=None, now=0)
    assert not verify_signature(secret="s3cret", body=b"body", header=None)
    assert not verify_signature(secret="s3cret", body=b"body", header="t=abc,v1=00")


def test_any_of_several_signatures_may_match_during_rotation():
    good = sign_body(secret="new", body=b"x", timestamp=100).split("v1=")[1]
    header = f"t=100,v1={'0' * 64},v1={good}"
    assert verify_signature(secret="new", body=b"x", header=header, now=100)
