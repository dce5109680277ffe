import base64

from support.domain.identity import SECRET_PREFIX, generate_secret, hash_secret, secret_hint, secrets_match
from support.domain.ids import new_id


def test_secrets_carry_32_random_bytes_and_are_unique() -> None:
    secrets = {generate_secret() for _ in range(200)}
    assert len(secrets) == 200
    for secret in secrets:
        assert secret.startswith(SECRET_PREFIX)
        raw = base64.urlsafe_b64decode(secret.removeprefix(SECRET_PREFIX) + "=")
        assert len(raw) == 32


def test_hash_is_stable_and_not_the_secret() -> None:
    secret = generate_secret()
    assert hash_secret(secret) == hash_secret(secret)
    assert hash_secret(secret) != hash_secret(generate_secret())
    assert secret not in hash_secret(secret)


def test_hint_is_a_short_prefix() -> None:
    secret = generate_secret()
    assert secret.startswith(secret_hint(secret))
    assert len(secret_hint(secret)) < len(secret) // 3


def test_constant_time_comparison_agrees_with_equality() -> None:
    assert secrets_match("abc", "abc")
    assert not secrets_match("abc", "abd")


def test_ids_are_version_7_and_time_ordered() -> None:
    ids = [new_id() for _ in range(50)]
    assert all(identifier.version == 7 for identifier in ids)
    millis = [identifier.int >> 80 for identifier in ids]
    assert millis == sorted(millis)
