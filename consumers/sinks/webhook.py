"""The webhook reference list: a signed, idempotent POST of each change to the client's URL.

Request: the change as JSON (the record the worker wrote), with

* ``X-DNC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>``: the receiver
  recomputes it with the shared secret and refuses stale timestamps (replays);
* ``Idempotency-Key``: the same for every retry of one change: a receiver that has seen it
  answers 2xx again without applying it twice.

Answers: 2xx delivered; 408, 425, 429, 5xx, timeouts and connection errors are retried by the
sync with exponential backoff and jitter; any other 4xx is final (dead-lettered with the
status and the start of the response). Changes to different numbers are sent concurrently
(``max_in_flight`` at most); one number's changes go one after the other, so they arrive in
order.

The receiver's answer is not ours to trust: only its status reaches the logs; a refusal's body
goes to the dead-letter header cut to :data:`MAX_HEADER_TEXT_BYTES`, on one line, without
control characters; at most :data:`_DRAIN_BYTES` of any body are read.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from consumers.sinks.base import Delivery, Result, Verdict
from schemas.topics import MAX_HEADER_TEXT_BYTES, header_text

SIGNATURE_HEADER = "X-DNC-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRYABLE_4XX = frozenset({408, 425, 429})
_EXCERPT_BYTES = 1024  # of a response body kept for the dead-letter header (then cut to 256)
_DRAIN_BYTES = 64 * 1024  # read to reuse the connection; a larger body closes it instead


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, now: float, tolerance: float = 300) -> bool:
    """What a receiver does: recompute the signature and refuse it if stale (replay)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


def classify(status: int, body: bytes | str) -> Result:
    """The verdict for an HTTP answer.

    A retried answer's detail is its status only (it is logged); a refusal's detail, which
    goes to the dead-letter header, adds the start of the body, made header-safe.
    """
    if 200 <= status < 300:
        return Result.delivered()
    if status >= 500:
        return Result(Verdict.RETRY, "server_error", f"HTTP {status}")
    if status in RETRYABLE_4XX:
        return Result(Verdict.RETRY, "throttled", f"HTTP {status}")
    if 400 <= status < 500:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        detail = header_text(f"HTTP {status}: {text[:_EXCERPT_BYTES]}", MAX_HEADER_TEXT_BYTES)
        return Result(Verdict.REJECTED, "rejected", detail)
    # 1xx/3xx: redirects are not followed (a moved endpoint is a configuration to fix).
    return Result(Verdict.RETRY, "sink_error", f"HTTP {status}")


def _excerpt(response: httpx.Response) -> bytes:
    """The first bytes of the body; the rest is drained up to a bound, never kept."""
    kept = bytearray()
    read = 0
    for chunk in response.iter_bytes():
        if len(kept) < _EXCERPT_BYTES:
            kept += chunk[: _EXCERPT_BYTES - len(kept)]
        read += len(chunk)
        if read > _DRAIN_BYTES:
            break
    return bytes(kept)


class WebhookSink:
    """One tenant's webhook; thread-safe, with a bounded number of requests in flight."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: bytes,
        timeout: float = 10.0,
        max_in_flight: int = 16,
        client: httpx.Client | None = None,
    ) -> None:
        self._url = url
        self._secret = secret
        self._client = client or httpx.Client(
            timeout=timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_in_flight),
            headers={"User-Agent": "dnc-sync/1"},
        )
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="webhook")

    def _post(self, delivery: Delivery) -> Result:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, delivery.body, int(time.time())),
            IDEMPOTENCY_HEADER: delivery.idempotency_key,
        }
        try:
            with self._client.stream(
                "POST", self._url, content=delivery.body, headers=headers
            ) as response:
                status, body = response.status_code, _excerpt(response)
        except httpx.TimeoutException as exc:
            return Result(Verdict.RETRY, "timeout", header_text(f"{type(exc).__name__}: {exc}"))
        except httpx.HTTPError as exc:
            return Result(Verdict.RETRY, "unavailable", header_text(f"{type(exc).__name__}: {exc}"))
        return classify(status, body)

    def _chain(self, deliveries: list[Delivery]) -> list[Result]:
        """One number's changes in order; the first not acknowledged holds the rest back."""
        results: list[Result] = []
        for index, delivery in enumerate(deliveries):
            result = self._post(delivery)
            results.append(result)
            if result.verdict is Verdict.RETRY:
                held = Result(Verdict.RETRY, result.kind, "held behind an earlier change")
                results.extend([held] * (len(deliveries) - index - 1))
                break
        return results

    def deliver(self, batch: Sequence[Delivery]) -> list[Result]:
        """POST every change; numbers in parallel, each number's changes in order."""
        chains: dict[str, list[int]] = {}
        for index, delivery in enumerate(batch):
            chains.setdefault(delivery.ordering_key, []).append(index)
        futures = [
            (indexes, self._pool.submit(self._chain, [batch[i] for i in indexes]))
            for indexes in chains.values()
        ]
        results: list[Result | None] = [None] * len(batch)
        for indexes, future in futures:
            for index, result in zip(indexes, future.result(), strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Wait for requests in flight, then close the connections."""
        self._pool.shutdown(wait=True)
        self._client.close()
