-- The reconciler's state (issue 15): breaks as records, the watermark of broker orders reconciled,
-- and the broker orders it follows until they are final.

-- A break: something the broker and our records disagree on, or an order that cannot move.
-- One row per (kind, order key): a break found again is updated (last_seen, times_seen, detail),
-- never duplicated. A resolved break found again with the same detail stays resolved; found with
-- another detail (the situation moved) it is open again.
CREATE TABLE reconcile_breaks (
    id              bigserial   PRIMARY KEY,
    kind            text        NOT NULL
                    CHECK (kind IN ('late_order', 'fill_mismatch', 'stuck', 'parked')),
    order_key       text        NOT NULL,  -- the broker's client_order_id (ours: <account>/<order>)
    broker_order_id text,
    detail          text        NOT NULL,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now(),
    times_seen      bigint      NOT NULL DEFAULT 1,
    resolved_at     timestamptz,
    resolved_by     text,
    resolution      text,
    UNIQUE (kind, order_key),
    CHECK ((resolved_at IS NULL) = (resolved_by IS NULL))
);
CREATE INDEX reconcile_breaks_open_idx ON reconcile_breaks (last_seen) WHERE resolved_at IS NULL;

-- Broker orders created up to created_up_to (the broker's own created/submitted time) have been
-- listed, classified and settled. Only moves forward.
CREATE TABLE reconcile_watermarks (
    name          text        PRIMARY KEY,
    created_up_to timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Broker orders seen open (not final) by a run. A run re-lists the broker's open orders; one
-- followed here that the listing no longer has became final since, and is asked for by id, so a
-- late fill or cancel of an order created long before the watermark is still reconciled.
CREATE TABLE reconcile_followed (
    broker_order_id text        PRIMARY KEY,
    client_order_id text        NOT NULL,
    open            boolean     NOT NULL,
    last_seen       timestamptz NOT NULL
);
CREATE INDEX reconcile_followed_open_idx ON reconcile_followed (last_seen) WHERE open;

-- Stuck and parked orders are found among the orders not yet final, without reading the others.
CREATE INDEX orders_live_idx ON orders (updated_at)
    WHERE status NOT IN ('SETTLED', 'CANCELED', 'EXPIRED', 'REJECTED');
