"""Requests the farm makes to addresses its users name (webhooks, issue 25), made safe against
server-side request forgery: a user must not make the farm reach its own loopback, its private
network or a cloud metadata address. The name is resolved once, every address it resolves to is
checked, and the connection goes to the checked address (the Host header and TLS name stay the
URL's), so a DNS answer that changes between the check and the request (rebinding) cannot steer
it elsewhere. The operator lets chosen networks through: FARM_WEBHOOK_ALLOWED_NETS."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from farm.errors import InputError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    address: str  # the checked IP the request goes to


def parse_nets(text: str | None) -> tuple[Network, ...]:
    """``127.0.0.0/8,10.1.0.0/16`` -> networks (a bad one is a configuration error)."""
    nets = []
    for item in (text or "").split(","):
        if item.strip():
            try:
                nets.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise InputError("FARM_WEBHOOK_ALLOWED_NETS", f"{item.strip()!r} is not a network") from None
    return tuple(nets)


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, allowed: tuple[Network, ...], *, resolve=socket.getaddrinfo) -> Target:
    """The target a URL names, or InputError: not http(s), no host, or an address that is not
    public and not in an allowed network."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError("url", f"{url!r}: expected an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise InputError("url", "credentials in the URL are not kept: the signature authenticates the farm")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InputError("url", f"{url!r}: bad port") from None
    try:
        found = resolve(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise InputError("url", f"cannot resolve {parts.hostname!r}") from None
    addresses = sorted({info[4][0] for info in found})
    if not addresses:
        raise InputError("url", f"cannot resolve {parts.hostname!r}")
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if not is_public(address) and not any(ip in net for net in allowed):
            raise InputError("url", f"{parts.hostname} resolves to {address}, a loopback, private or reserved "
                                    "address: refused (the operator may allow it: FARM_WEBHOOK_ALLOWED_NETS)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, path, addresses[0])


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a fixed address, verifying the certificate for the URL's host name."""

    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self.address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    """POST to the checked address; (status, the first KiB of the answer)."""
    if target.scheme == "https":
        conn: http.client.HTTPConnection = _PinnedHTTPS(target, timeout)
    else:
        conn = http.client.HTTPConnection(target.address, target.port, timeout=timeout)
    try:
        default_port = 443 if target.scheme == "https" else 80
        host = target.host if target.port == default_port else f"{target.host}:{target.port}"
        conn.request("POST", target.path, body=body, headers={"Host": host, **headers})
        answer = conn.getresponse()
        return answer.status, answer.read(1024)
    finally:
        conn.close()
