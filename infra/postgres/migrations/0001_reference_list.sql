-- The client's reference list, as the reference-list sync (`dnc sync`) keeps it.
--
-- reference_list        one row per tenant and number: what the client's CRM reads.
--                       do_not_call is true while any scope suppresses the number; the
--                       personal fields are the client's own data about the contact, and an
--                       erasure clears them (the do-not-call row stays: it is what keeps the
--                       person from being called again).
-- reference_list_scope  the latest change per tenant, number and scope target (tenant-wide,
--                       one campaign, or the platform-wide "_global"), from which the
--                       reference_list row is derived. A change only replaces an older one
--                       (changed_at, then version): a replayed or late record never moves a
--                       row backwards in time.

CREATE TABLE reference_list_scope (
    tenant          text        NOT NULL,
    phone_e164      text        NOT NULL,
    target          text        NOT NULL,
    scope           text        NOT NULL CHECK (scope IN ('global', 'tenant', 'campaign')),
    campaign_id     text,
    suppressed      boolean     NOT NULL,
    kind            text,
    reason_code     text,
    source_event_id uuid,
    occurred_at     timestamptz,
    expires_at      timestamptz,
    version         bigint      NOT NULL,
    changed_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, phone_e164, target)
);

CREATE TABLE reference_list (
    tenant          text        NOT NULL,
    phone_e164      text        NOT NULL CHECK (phone_e164 ~ '^\+[1-9][0-9]{6,14}$'),
    do_not_call     boolean     NOT NULL DEFAULT false,
    kind            text,
    scope           text,
    campaign_id     text,
    reason_code     text,
    source_event_id uuid,
    occurred_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    erased_at       timestamptz,
    -- The contact's personal data the client keeps in its reference list (cleared on erasure).
    full_name       text,
    email           text,
    postal_address  text,
    notes           text,
    PRIMARY KEY (tenant, phone_e164)
);

CREATE INDEX reference_list_do_not_call ON reference_list (tenant) WHERE do_not_call;
