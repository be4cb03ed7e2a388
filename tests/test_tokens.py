import re

import pytest

from common.errors import InvalidArgument
from common.pki import RootCA
from common.tokens import JoinToken, new_token, parse_token, role_for_token, secrets_equal

CA = RootCA.generate("cluster-tokens")
DIGEST = CA.digest()
SECRET = "abcdefghijklmnopqrstuvwxy"


def test_new_token_round_trips():
    text = new_token(CA.cert_pem)
    assert re.fullmatch(r"SHLTKN-1-[0-9a-f]{64}-[a-z0-9]{25}", text)
    tok = parse_token(text)
    assert tok.version == 1
    assert tok.ca_digest == DIGEST
    assert str(tok) == text
    assert tok == JoinToken(1, DIGEST, text.rsplit("-", 1)[1])


def test_new_tokens_differ_and_repr_hides_secret():
    a, b = new_token(CA.cert_pem), new_token(CA.cert_pem)
    assert a != b
    tok = parse_token(a)
    assert tok.secret not in repr(tok)


def test_parse_strips_surrounding_whitespace():
    text = f"SHLTKN-1-{DIGEST}-{SECRET}"
    assert str(parse_token(f"  {text}\n")) == text


def _error(text: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parse_token(text)
    err = info.value
    assert err.field == "token"
    assert err.message.startswith("invalid join token: ")
    assert "shoal swarm join-token" in err.message
    return err


@pytest.mark.parametrize("text, expect", [
    ("", "must start with 'SHLTKN-'"),
    ("hello", "must start with 'SHLTKN-'"),
    (f"SWMTKN-1-{DIGEST}-{SECRET}", "Docker swarm token"),
    (f"SHLTKN-1-{DIGEST}", "4 parts"),
    (f"SHLTKN-1-{DIGEST}-{SECRET}-extra", "4 parts"),
    (f"SHLTKN-2-{DIGEST}-{SECRET}", "version '2' is not supported"),
    (f"SHLTKN-x-{DIGEST}-{SECRET}", "version 'x' is not supported"),
    (f"SHLTKN-1-{DIGEST[:40]}-{SECRET}", "has 40 characters instead of 64"),
    (f"SHLTKN-1-{'g' * 64}-{SECRET}", "64 lowercase hex digits"),
    (f"SHLTKN-1-{DIGEST.upper()}-{SECRET}", "64 lowercase hex digits"),
    (f"SHLTKN-1-{DIGEST}-{SECRET[:-1]}", "it has 24 characters"),
    (f"SHLTKN-1-{DIGEST}-{SECRET.upper()}", "25 lowercase letters or digits"),
    (f"SHLTKN-1-{DIGEST}-{SECRET[:-1]}!", "25 lowercase letters or digits"),
])
def test_malformed_tokens_explain_themselves(text, expect):
    err = _error(text)
    assert expect in err.message


def test_error_never_echoes_the_secret():
    err = _error(f"SHLTKN-1-{DIGEST[:10]}-{SECRET}")
    assert SECRET not in err.message


def test_secrets_equal():
    assert secrets_equal("abc", "abc")
    assert not secrets_equal("abc", "abd")
    assert not secrets_equal("abc", "ab")
    assert not secrets_equal("é", "e")  # non-ASCII must not raise


def test_role_for_token():
    worker, manager = new_token(CA.cert_pem), new_token(CA.cert_pem)
    assert role_for_token(worker, worker, manager) == "worker"
    assert role_for_token(manager, worker, manager) == "manager"
    assert role_for_token(f" {manager}\n", worker, manager) == "manager"
    assert role_for_token(new_token(CA.cert_pem), worker, manager) is None
    assert role_for_token(worker[:-1], worker, manager) is None


def test_role_for_token_empty_never_matches():
    # an unset token on the manager side must not let an empty token in
    assert role_for_token("", "", "") is None
    assert role_for_token("", "", new_token(CA.cert_pem)) is None
