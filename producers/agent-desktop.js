// Record an opposition ("do not call me") from an agent desktop through the dnc HTTP gateway.
//
// Works in browsers and in Node 18+ (global fetch and crypto.randomUUID). Embed it in the
// agent desktop, or copy the fetch call. The token is an *agent* token (`dnc token create
// --tenant T --role agent`): it can only record oppositions for its tenant. In a browser,
// prefer a token per desktop (or a small backend that holds it), and list the desktop's
// origin in DNC_GATEWAY_CORS_ORIGINS.
//
//   const eventId = await recordOpposition({
//     gatewayUrl: "https://dnc-gateway.example", token: AGENT_TOKEN,
//     phone: "06 12 34 56 78", kind: "refusal", agentId: "agent-42",
//   });
//
// Resolves with the event id once Kafka acknowledged the event (HTTP 202). Retries on 429
// and 503 with the SAME event id, so a retry can never record the refusal twice. Rejects
// with an Error whose `status` and `details` say what was wrong (422: fix the input).

export async function recordOpposition({
  gatewayUrl,
  token,
  phone,
  kind = "opposition", // refusal | opposition | consent_withdrawn | erasure
  campaignId = undefined, // campaign scope when given
  agentId = undefined,
  reasonCode = undefined,
  eventId = crypto.randomUUID(),
  attempts = 5,
}) {
  const body = JSON.stringify({
    phone,
    kind,
    campaign_id: campaignId,
    agent_id: agentId,
    reason_code: reasonCode,
    event_id: eventId,
  });
  for (let attempt = 1; ; attempt++) {
    let response;
    try {
      response = await fetch(`${gatewayUrl}/v1/oppositions`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body,
      });
    } catch (networkError) {
      if (attempt >= attempts) throw networkError;
      await sleep(backoff(attempt));
      continue;
    }
    if (response.status === 202) return (await response.json()).event_id;
    const error = await response.json().catch(() => ({}));
    const retryable = response.status === 429 || response.status >= 500;
    if (!retryable || attempt >= attempts) {
      const where = (error.details || []).map((d) => `${d.field}: ${d.message}`).join("; ");
      const failure = new Error(
        `opposition not recorded (HTTP ${response.status} ${error.error || ""}): ` +
          `${error.message || response.statusText}${where ? ` (${where})` : ""}`,
      );
      failure.status = response.status;
      failure.details = error.details || [];
      failure.eventId = eventId; // retry later with it: the same event twice is a no-op
      throw failure;
    }
    const retryAfter = Number(response.headers.get("Retry-After"));
    await sleep(retryAfter > 0 ? retryAfter * 1000 : backoff(attempt));
  }
}

function backoff(attempt) {
  return Math.min(8000, 250 * 2 ** attempt);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
