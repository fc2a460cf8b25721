"""Where checks may connect: allowed ports, denied networks, and name lookups bounded by a deadline."""

from __future__ import annotations

import ipaddress
import os
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

DEFAULT_ALLOWED_PORTS: frozenset[int] = frozenset({25, 465, 587, 2525})
# Metadata endpoints come first so a refusal names the most specific network.
DEFAULT_DENIED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(network)
    for network in (
        "169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32",
        "169.254.0.0/16", "fe80::/10",
    )
)


@dataclass(frozen=True)
class DestinationPolicy:
    """Where a check may connect: ports on an allow-list, addresses outside denied networks."""

    allowed_ports: frozenset[int] = DEFAULT_ALLOWED_PORTS
    denied_networks: tuple[IPNetwork, ...] = DEFAULT_DENIED

    @classmethod
    def from_strings(cls, ports: str | None, networks: str | None) -> DestinationPolicy:
        """Build a policy from comma-separated environment values; None keeps the default.

        An empty network list denies nothing (for labs); an empty port list is an error.
        """
        return cls(
            allowed_ports=DEFAULT_ALLOWED_PORTS if ports is None else _parse_ports(ports),
            denied_networks=DEFAULT_DENIED if networks is None else _parse_networks(networks),
        )

    def port_allowed(self, port: int) -> bool:
        """Whether checks may connect to this TCP port."""
        return port in self.allowed_ports

    def denied_network(self, address: str) -> IPNetwork | None:
        """The denied network that contains the address, or None when it may be contacted."""
        ip = ipaddress.ip_address(address)
        candidates = [ip]
        # An IPv4-mapped IPv6 address reaches the IPv4 host, so it is judged as that host.
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        for network in self.denied_networks:
            if any(candidate in network for candidate in candidates):
                return network
        return None


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse_ports(text: str) -> frozenset[int]:
    ports = set()
    for item in _items(text):
        if not (item.isascii() and item.isdigit() and 1 <= int(item) <= 65535):
            raise ValueError(f"Not a TCP port: {item!r}.")
        ports.add(int(item))
    if not ports:
        raise ValueError("The list of allowed ports is empty.")
    return frozenset(ports)


def _parse_networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in _items(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"Not an IP network: {item!r}.") from None
    return tuple(networks)



def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the operating system's resolver."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


class LookupThreads:
    """Daemon threads for name lookups, which have no timeout of their own.

    A lookup that outlives its deadline keeps its thread (and is dropped when it
    ends); the next lookup gets another thread, so a stuck lookup never holds up
    others. Threads that finish wait for more work: starting one per check added
    about 0.4 ms (15 %) to a loopback STARTTLS validation.
    """

    _KEEP_IDLE = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[Any]] = []
        # Threads do not survive fork; a child must not hand work to its parent's.
        os.register_at_fork(after_in_child=self._idle.clear)

    def call(self, function: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(inbox,), name="smtp-check-lookup", daemon=True).start()
        outcome: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        inbox.put((function, args, outcome))
        try:
            succeeded, value = outcome.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("name resolution timed out") from None
        if not succeeded:
            raise value
        return value

    def _work(self, inbox: queue.SimpleQueue[Any]) -> None:
        while True:
            function, args, outcome = inbox.get()
            try:
                result = (True, function(*args))
            except Exception as exc:  # noqa: BLE001 -- handed to the caller, who re-raises it
                result = (False, exc)
            with self._lock:
                keep = len(self._idle) < self._KEEP_IDLE
                if keep:
                    self._idle.append(inbox)
            outcome.put(result)
            if not keep:
                return


LOOKUPS = LookupThreads()


def ip_literal(host: str) -> str | None:
    """The address ``host`` spells (``[::1]`` or bare), or None for a name."""
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None

