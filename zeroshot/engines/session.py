"""Connecting to Ray (``pip install 'zeroshot[ray]'``): an existing cluster, or a local one for one command.

Every ``--engine ray`` command runs inside :func:`ray_session`, so a user who already called ``ray.init`` (a
notebook, a Ray job) keeps their connection, and a command line with no ``--address`` starts a local cluster and
shuts it down again when it ends.
"""
from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

ENGINES = ("local", "ray")
CONNECT_TIMEOUT_S = 2.0  # one TCP connect tells whether a cluster answers (ray.init itself retries for minutes)


def check_engine(engine: str) -> str:
    """``engine`` if it is one we have, else a ValueError naming the choices."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of: {', '.join(ENGINES)}")
    return engine


def require_ray():
    """The ``ray`` module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray engine needs Ray: pip install 'zeroshot[ray]' (or drop --engine ray to run "
                          "locally)") from None
    return ray


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None):
    """Yield the ``ray`` module connected to a cluster.

    Already connected: that connection is used and left open. ``address`` (``auto``, ``HOST:PORT`` or
    ``ray://HOST:PORT``; None reads ``$RAY_ADDRESS`` as Ray does): connect, and disconnect afterwards. No address:
    start a local cluster with ``num_cpus`` CPUs (default: all), no dashboard, and shut it down afterwards.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None and check_address(address):
        check_reachable(address)
    options = {"include_dashboard": False, "logging_level": "WARNING"}
    try:
        if address is None:  # a private cluster for this command: its security notice is not the user's concern
            ray.init(num_cpus=num_cpus, **{**options, "logging_level": "ERROR"})
        else:
            ray.init(address=address, **options)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        why = " ".join(str(exc).split())[:200]
        if address is None:
            raise ConnectionError(f"cannot start a local Ray cluster: {why}; rerun with --debug for Ray's log, or "
                                  "use --engine local") from None
        raise ConnectionError(f"cannot connect to the Ray cluster at {address}: {why}; check that it runs "
                              "(`ray status`) or drop --address to start a local one") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` / ``ray://HOST:PORT``, None for ``auto``; a ValueError for anything else."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"cannot read Ray address {address!r}: write auto, HOST:PORT or ray://HOST:PORT")
    return host, int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A ConnectionError at once when nothing listens at ``HOST:PORT`` / ``ray://HOST:PORT``."""
    host, port = check_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); check that it runs "
                              "(`ray status` on its head node) or drop --address to start a local one") from None


def in_order(ray, submit: Callable, items: Iterable, limit: int | None) -> Iterator:
    """``ray.get`` of ``submit(item)`` for every item, yielded in item order, with at most ``limit`` tasks in flight
    (None: all at once), so that results can be consumed (merged, appended) as they come. A task's own exception is
    raised as itself, not wrapped in Ray's RayTaskError, so that a bad input is the same error as locally."""
    pending: deque = deque()
    try:
        for item in items:
            if limit is not None and len(pending) >= limit:
                yield ray.get(pending.popleft())
            pending.append(submit(item))
        while pending:
            yield ray.get(pending.popleft())
    except ray.exceptions.RayTaskError as exc:
        raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None
