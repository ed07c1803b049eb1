"""`farm serve` is safe by default (issue 23): loopback unless told, and a public address only
with TLS or behind a proxy the operator names."""

import pytest
from click.testing import CliRunner

from farm.cli import cli
from farm.errors import InputError
from farm.service.server import check_binding, is_loopback


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.3", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("10.0.0.5", False), ("farm.example.com", False), ("::", False)])
def test_loopback_is_told_apart(host, loopback):
    assert is_loopback(host) is loopback


def test_a_public_address_needs_tls_or_a_proxy():
    check_binding("127.0.0.1", tls=False, behind_proxy=False)
    check_binding("0.0.0.0", tls=True, behind_proxy=False)
    check_binding("0.0.0.0", tls=False, behind_proxy=True)
    with pytest.raises(InputError, match="not a loopback address: give --tls-cert and --tls-key, or --behind-proxy"):
        check_binding("0.0.0.0", tls=False, behind_proxy=False)


def test_farm_serve_refuses_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "8123"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: host: 0.0.0.0 is not a loopback address")
    half = CliRunner().invoke(cli, ["serve", "--tls-cert", __file__])
    assert half.exit_code == 2 and "give both --tls-cert and --tls-key" in half.stderr


def test_key_scopes_and_expiry_parse_in_one_line():
    from datetime import datetime, timedelta, timezone

    from farm.tenancy.keys import key_prefix, new_key, parse_expiry, parse_scopes

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_expiry("30d", now) - now == timedelta(days=30) and parse_expiry("never", now) is None
    assert parse_expiry("12H", now) - now == timedelta(hours=12)
    for bad, words in (("5s", "outside 1m..3650d"), ("soon", "expected a duration")):
        with pytest.raises(InputError, match=words):
            parse_expiry(bad, now)
    assert parse_scopes("submit, read") == {"submit", "read"}
    with pytest.raises(InputError, match="unknown scope 'root'"):
        parse_scopes("read,root")
    made = new_key(b"secret")
    assert key_prefix(made.key) == made.prefix and key_prefix(made.key + "x") is None
