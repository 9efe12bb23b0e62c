-- The double-entry ledger (TigerBeetle's vocabulary): accounts per (owner, asset), two-phase
-- holds, immutable journal entries, and the idempotency record of every operation.
-- Amounts are exact NUMERIC: cash is kept in cents by the code, shares to 9 decimals.

-- Opened customer accounts. last_fence is the newest lock fencing token any reserve for this
-- account has carried: the database refuses a reserve with an older one (a holder whose lock
-- expired), whichever asset it reserves.
CREATE TABLE customers (
    account_id  text        PRIMARY KEY,
    currency    text        NOT NULL DEFAULT 'USD',
    last_fence  bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per (owner, asset). Firm owners start with '$': '$omnibus' (the broker omnibus
-- account), '$fees', '$external' (external funding: deposits come from it) and '$error' (fills
-- of broker orders no customer owns). Firm rows are counterparties and may go negative.
CREATE TABLE ledger_accounts (
    id          bigserial   PRIMARY KEY,
    owner       text        NOT NULL,
    kind        text        NOT NULL
                CHECK (kind IN ('customer', 'omnibus', 'fees', 'external', 'error')),
    asset       text        NOT NULL,
    available   numeric(38, 9) NOT NULL DEFAULT 0,
    held        numeric(38, 9) NOT NULL DEFAULT 0,
    version     bigint      NOT NULL DEFAULT 0,
    last_fence  bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner, asset),
    CONSTRAINT customer_never_negative
        CHECK (kind <> 'customer' OR (available >= 0 AND held >= 0)),
    CONSTRAINT firm_owner_prefix CHECK ((kind = 'customer') = (owner NOT LIKE '$%'))
);

-- Two-phase holds: reserved for one order, then posted (fills) and voided (the rest), only by
-- that order's own steps. A buy holds cash (asset USD), a sell holds shares (asset = symbol).
CREATE TABLE holds (
    id              bigserial   PRIMARY KEY,
    order_id        text        NOT NULL UNIQUE,
    owner           text        NOT NULL,
    ledger_account_id bigint    NOT NULL REFERENCES ledger_accounts (id),
    asset           text        NOT NULL,
    amount          numeric(38, 9) NOT NULL CHECK (amount > 0),
    held_remaining  numeric(38, 9) NOT NULL CHECK (held_remaining >= 0),
    posted_qty      numeric(38, 9) NOT NULL DEFAULT 0,
    posted_notional numeric     NOT NULL DEFAULT 0,  -- exact sum of qty * price, unrounded
    posted_cash     numeric(38, 2) NOT NULL DEFAULT 0,
    posted_fee      numeric(38, 2) NOT NULL DEFAULT 0,
    side            text        NOT NULL CHECK (side IN ('buy', 'sell')),
    symbol          text        NOT NULL,
    status          text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'voided')),
    version         bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX holds_open_idx ON holds (owner) WHERE status = 'open';

-- Orders voided before any hold existed: a reserve arriving late for one of them is refused, so
-- it can never create a hold nobody will release.
CREATE TABLE hold_tombstones (
    order_id    text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Journal: why (code) and what (lines). Every entry's lines sum to zero per asset.
CREATE TABLE journal_entries (
    id              bigserial   PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    code            text        NOT NULL
                    CHECK (code IN ('deposit', 'withdraw', 'reserve', 'post', 'void', 'error_fill')),
    order_id        text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX journal_entries_order_idx ON journal_entries (order_id);

CREATE TABLE journal_lines (
    id                bigserial PRIMARY KEY,
    entry_id          bigint    NOT NULL REFERENCES journal_entries (id),
    ledger_account_id bigint    NOT NULL REFERENCES ledger_accounts (id),
    asset             text      NOT NULL,
    bucket            text      NOT NULL CHECK (bucket IN ('available', 'held')),
    amount            numeric(38, 9) NOT NULL CHECK (amount <> 0)
);
CREATE INDEX journal_lines_entry_idx ON journal_lines (entry_id);
CREATE INDEX journal_lines_account_idx ON journal_lines (ledger_account_id);

CREATE FUNCTION journal_is_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'journal rows are immutable (% on %)', TG_OP, TG_TABLE_NAME;
END
$$;
CREATE TRIGGER journal_entries_immutable BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION journal_is_immutable();
CREATE TRIGGER journal_lines_immutable BEFORE UPDATE OR DELETE ON journal_lines
    FOR EACH ROW EXECUTE FUNCTION journal_is_immutable();

-- Fills of broker orders we never meant to keep (found by the reconciler), booked between the
-- omnibus and the firm error account, cumulatively like a hold's posts.
CREATE TABLE error_positions (
    broker_order_id text        PRIMARY KEY,
    client_order_id text        NOT NULL,
    symbol          text        NOT NULL,
    side            text        NOT NULL CHECK (side IN ('buy', 'sell')),
    posted_qty      numeric(38, 9) NOT NULL DEFAULT 0,
    posted_notional numeric     NOT NULL DEFAULT 0,
    posted_cash     numeric(38, 2) NOT NULL DEFAULT 0,
    version         bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Idempotency: one row per operation key, written in the same transaction as its effect. A
-- repeat with the same key returns `result`; with other arguments (args_hash) it is refused.
CREATE TABLE ledger_operations (
    key         text        PRIMARY KEY,
    operation   text        NOT NULL,
    args_hash   text        NOT NULL,
    result      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
