"""`confide.httpserve.ratelimit`: client keys (IPv6 by /64), token buckets on an injected clock, and
the bound on the bucket table."""

from __future__ import annotations

import pytest

from confide.errors import UsageError
from confide.httpserve.ratelimit import (
    ATTEST_RATE,
    WRITE_RATE,
    Rate,
    RateLimiter,
    client_key,
    parse_rate,
    retry_after,
)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),  # the same /64: one client
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next /64: another
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped (dual-stack socket): the IPv4 client
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("not:an:address", "not:an:address"),
        ("", ""),
    ],
)
def test_client_keys(host: str, key: str) -> None:
    assert client_key(host) == key


def test_a_bucket_allows_its_burst_then_refuses_until_it_refills() -> None:
    clock = _Clock()
    limiter = RateLimiter(Rate(2.0, 3.0), clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a")
    assert wait == pytest.approx(0.5)  # one token at 2/s
    assert limiter.take("b") == 0.0  # another client has its own bucket
    assert limiter.limited == 1
    clock.now += 0.25
    assert limiter.take("a") == pytest.approx(0.25)  # refused requests take nothing
    clock.now += 0.25
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    clock.now += 3600  # refills to the burst, no further
    assert [limiter.take("a") for _ in range(4)][-1] > 0
    assert limiter.limited == 4


def test_the_bucket_table_is_bounded() -> None:
    clock = _Clock()
    limiter = RateLimiter(Rate(1.0, 1.0), max_clients=3, clock=clock)
    for key in ("a", "b", "c"):
        assert limiter.take(key) == 0.0
    assert limiter.take("a") > 0  # a is now the most recently seen
    for n in range(1000):  # a flood of source addresses
        limiter.take(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) == 3
    assert limiter.evicted == 1000
    assert limiter.take("a") == 0.0  # evicted: back with a full bucket (at most one more burst)


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after(w) for w in (0.001, 1.0, 1.01, 29.5)] == ["1", "1", "2", "30"]


def test_parse_rate() -> None:
    assert parse_rate("200", None, "attest") == Rate(200.0, 400.0) == ATTEST_RATE
    assert parse_rate("10", None, "write") == WRITE_RATE
    assert parse_rate("0.5", None, "write") == Rate(0.5, 1.0)
    assert parse_rate("5", "7", "write") == Rate(5.0, 7.0)
    assert parse_rate("0", "7", "write") is None
    for rate, burst in (("-1", None), ("nan", None), ("inf", None), ("x", None), ("5", "0.5"), ("5", "y")):
        with pytest.raises(UsageError):
            parse_rate(rate, burst, "write")


def test_the_cli_defaults_are_the_modules() -> None:
    from confide.cas.cli import cas_serve
    from confide.httpserve.limits import (
        BODY_TIMEOUT,
        HANDSHAKE_TIMEOUT,
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_CLIENT,
    )

    defaults = {p.name: p.default for p in cas_serve.params}
    assert defaults["max_connections"] == MAX_CONNECTIONS
    assert defaults["max_connections_per_ip"] == MAX_CONNECTIONS_PER_CLIENT
    assert defaults["body_timeout"] == BODY_TIMEOUT
    assert defaults["tls_handshake_timeout"] == HANDSHAKE_TIMEOUT
    assert parse_rate(str(defaults["attest_rate"]), None, "attest") == ATTEST_RATE
    assert parse_rate(str(defaults["write_rate"]), None, "write") == WRITE_RATE
