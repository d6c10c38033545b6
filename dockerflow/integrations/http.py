"""An HTTP dependency check through httpx: does the URL answer with an expected status in time?

Message IDs, one per way the request can fail, so that alerts can tell them apart:

* :data:`~dockerflow.health.ERROR_HTTP_NAME_NOT_RESOLVED` (``E020``), the host name could not be
  resolved;
* :data:`~dockerflow.health.ERROR_HTTP_CANNOT_CONNECT` (``E021``), the connection was refused,
  the host unreachable, or the connection reset while it was made;
* :data:`~dockerflow.health.ERROR_HTTP_TLS` (``E022``), the TLS handshake failed (a certificate
  not trusted, such as a self-signed one; a server that does not speak TLS);
* :data:`~dockerflow.health.ERROR_HTTP_TIMEOUT` (``E023``), no complete answer in time:
  connecting, the response's headers, or its body (a server that sends the headers and then
  stalls is reported so, with the status it sent);
* :data:`~dockerflow.health.ERROR_HTTP_UNEXPECTED_STATUS` (``E024``), an answer whose status is
  not expected;
* :data:`~dockerflow.health.ERROR_HTTP_EXCEPTION` (``E025``), any other failure of the request
  (the connection closed mid-answer, an answer that is not HTTP).

The URL in every message has its password and the values of its query string replaced by
``***``; the headers are never shown.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import anyio

from .. import health
from ..health import CheckData, CheckMessage, Error
from ..masking import mask_secrets, short_error
from ._support import Bounded, PerLoop, is_driver_failure, requires

#: The statuses expected when none are given: 2xx and 3xx (redirects are not followed).
DEFAULT_EXPECTED = frozenset(range(200, 400))

#: Bytes of the body read at most: enough to know that it arrives, not a download.
MAX_BODY_BYTES = 64 * 1024

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpCheck(Bounded):
    """An async check that sends one request to an HTTP dependency and checks its status.

    It uses one ``httpx.AsyncClient`` per event loop, made at its first run and kept from run
    to run (its connections are reused), closed when its loop ends or by :meth:`close`.
    Redirects are not followed: a ``3xx`` is an answer like any other. Up to
    :data:`MAX_BODY_BYTES` of the body are read, so that a server that sends its headers and
    then stalls fails the check; the rest is not waited for.

    :param url: an ``http://`` or ``https://`` URL.
    :param method: the request's method, ``GET`` by default.
    :param expected_statuses: the statuses that pass; by default 200 to 399.
    :param headers: headers to send (an ``Authorization`` one, say); never shown in a message.
    :param timeout: the timeout the check runs under, in seconds (default 3): the whole request,
        connecting and reading included, is bounded a little under it
        (:func:`~dockerflow.integrations.driver_timeout`) so that a slow dependency is reported
        with ``E023`` rather than the engine's timeout. The Flask extension sets it from
        ``DOCKERFLOW_CHECK_TIMEOUT`` when it is not given.
    :param verify: ``True`` to verify the server's certificate against the system's CAs,
        a path to a CA bundle, an ``ssl.SSLContext``, or ``False`` not to verify (not advised).
    :raises ValueError: if ``url`` is not an absolute ``http(s)://`` URL with a host, the method
        is unknown or a status is not from 100 to 599.
    :raises CheckRegistrationError: if ``timeout`` is not a positive number of seconds.
    :raises MissingDependencyError: if httpx is not installed (the ``http`` extra).
    :raises OSError: if ``verify`` names a CA bundle that cannot be read.
    """

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        expected_statuses: Iterable[int] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        verify: bool | str | ssl.SSLContext = True,
    ) -> None:
        super().__init__(timeout)
        with requires("httpx", extra="http"):
            import httpx
        try:
            parsed = httpx.URL(url)
        except (TypeError, httpx.InvalidURL) as exc:
            raise ValueError(f"HttpCheck takes an http(s):// URL: {short_error(exc)}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(
                f"HttpCheck takes an absolute http:// or https:// URL, got {display_url(url)!r}"
            )
        self.url = url
        self.method = str(method).upper()
        if self.method not in _METHODS:
            raise ValueError(f"HttpCheck: unknown method {method!r}")
        self.expected = _statuses(expected_statuses)
        self.headers = dict(headers or {})
        if isinstance(verify, str):
            # A CA bundle, read once here (a missing file fails now, not at every heartbeat);
            # httpx itself takes a path no more.
            verify = ssl.create_default_context(cafile=verify)
        self._verify = verify
        self._shown = display_url(url)
        # Connections belong to the loop that opened them: one client per loop.
        self._clients: PerLoop[Any] = PerLoop(lambda client: client.aclose())

    async def __call__(self) -> list[CheckMessage | CheckData]:
        """Send the request; return the status as a value, and an error when it is not one
        of the expected, or when the request failed (see the module for the IDs)."""
        with requires("httpx", extra="http"):
            import httpx
        bound = self.driver_timeout
        status: int | None = None
        try:
            client = await self._clients.get(self._client)
            with anyio.fail_after(bound):
                async with client.stream(
                    self.method, self.url, headers=self.headers, timeout=bound
                ) as response:
                    status = response.status_code
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_BODY_BYTES:
                            break
        except TimeoutError:  # anyio's bound: a body that trickles past it
            return [self._timed_out(status, bound)]
        except httpx.TimeoutException:
            return [self._timed_out(status, bound)]
        except httpx.TransportError as exc:
            return [self._transport_failure(exc)]
        except BaseException as exc:  # a CancelledError the client raised, say
            if isinstance(exc, Exception) or not is_driver_failure(exc):
                raise
            return [self._failure(health.ERROR_HTTP_EXCEPTION, f"failed: {short_error(exc)}")]
        value = CheckData("status_code", status)
        if status not in self.expected:
            phrase = _reason(status)
            text = f"answered {status}{phrase}, expected {_describe(self.expected)}"
            return [value, self._failure(health.ERROR_HTTP_UNEXPECTED_STATUS, text)]
        return [value]

    async def _client(self) -> Any:
        import httpx

        return httpx.AsyncClient(verify=self._verify, follow_redirects=False)

    def _failure(self, msg_id: str, text: str) -> CheckMessage:
        return Error(mask_secrets(f"{self.method} {self._shown} {text}"), id=msg_id)

    def _timed_out(self, status: int | None, bound: float) -> CheckMessage:
        if status is None:
            text = f"did not answer within {bound:g}s"
        else:
            text = f"sent its headers ({status}) but not its body within {bound:g}s"
        return self._failure(health.ERROR_HTTP_TIMEOUT, text)

    def _transport_failure(self, exc: BaseException) -> CheckMessage:
        causes = list(_causes(exc))
        unresolved = next((c for c in causes if isinstance(c, socket.gaierror)), None)
        if unresolved is not None:
            return self._failure(
                health.ERROR_HTTP_NAME_NOT_RESOLVED,
                f"failed: host name not resolved ({short_error(unresolved)})",
            )
        tls = next((c for c in causes if isinstance(c, ssl.SSLError)), None)
        if tls is not None:
            return self._failure(
                health.ERROR_HTTP_TLS, f"failed: TLS handshake failed ({short_error(tls)})"
            )
        import httpx

        if isinstance(exc, httpx.ConnectError):
            refused = next((c for c in causes if isinstance(c, ConnectionRefusedError)), None)
            why = "connection refused" if refused is not None else short_error(exc)
            return self._failure(health.ERROR_HTTP_CANNOT_CONNECT, f"failed: {why}")
        return self._failure(health.ERROR_HTTP_EXCEPTION, f"failed: {short_error(exc)}")

    async def close(self) -> None:
        """Close the running loop's client; a later run makes a new one. Run it on the loop
        the checks run on: ``dockerflow.call_in_loop(check.close)``."""
        await self._clients.discard()

    def __repr__(self) -> str:
        return f"HttpCheck({self.method} {self._shown}, timeout={self.timeout!r})"


def http_check(
    url: str,
    *,
    method: str = "GET",
    expected_statuses: Iterable[int] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
    verify: bool | str | ssl.SSLContext = True,
) -> HttpCheck:
    """Return the check of an HTTP dependency at ``url`` (see :class:`HttpCheck`).

    ::

        dockerflow.check(http_check("https://payments.internal/__lbheartbeat__"),
                         name="payments", timeout=1.0)

    :returns: an async check function.
    :raises ValueError: as :class:`HttpCheck`.
    :raises MissingDependencyError: if httpx is not installed (the ``http`` extra).
    """
    return HttpCheck(
        url,
        method=method,
        expected_statuses=expected_statuses,
        headers=headers,
        timeout=timeout,
        verify=verify,
    )


def display_url(url: str) -> str:
    """Return ``url`` as messages show it: its password and each query value replaced by
    ``***``, its fragment dropped, and any other secret masked.

    :param url: a URL, well formed or not.
    :returns: the text to show.
    """
    base, _, query = url.partition("#")[0].partition("?")
    scheme, sep, rest = base.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        userinfo, at, host = authority.rpartition("@")
        if at:
            user, colon, _password = userinfo.partition(":")
            authority = f"{user}:***@{host}" if colon else f"{user}@{host}"
        base = f"{scheme}{sep}{authority}{slash}{path}"
    if query:
        pairs = (pair.partition("=") for pair in query.split("&"))
        base += "?" + "&".join(f"{key}=***" if eq else key for key, eq, _ in pairs)
    return mask_secrets(base)


def _statuses(given: Iterable[int] | None) -> frozenset[int]:
    if given is None:
        return DEFAULT_EXPECTED
    statuses = frozenset(given)
    bad = [
        s for s in statuses if isinstance(s, bool) or not isinstance(s, int) or not 100 <= s <= 599
    ]
    if bad or not statuses:
        raise ValueError(
            "HttpCheck: expected_statuses must be HTTP statuses from 100 to 599, "
            f"got {bad or 'none'}"
        )
    return statuses


def _describe(statuses: frozenset[int]) -> str:
    if statuses == DEFAULT_EXPECTED:
        return "2xx or 3xx"
    shown = sorted(statuses)
    return ", ".join(str(s) for s in shown[:10]) + (" ..." if len(shown) > 10 else "")


def _reason(status: int | None) -> str:
    import http

    try:
        return f" {http.HTTPStatus(status).phrase}" if status is not None else ""
    except ValueError:
        return ""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """Every exception behind ``exc``: its causes, contexts and the members of groups."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(getattr(current, "exceptions", ()))
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
