-- Pre-trade risk (issue 17, part 3): per-account limit overrides, each account's usage per New
-- York day, and the firm-wide trading state with the log of every change. The reserve reads all
-- of them in its own transaction (activities/ledger/risk.py, core/risk.py).

-- An account's own limits; NULL: the firm's default (the settings). `ordersaga risk clear` sets
-- them all back to NULL (nothing is deleted).
CREATE TABLE risk_limits (
    account_id          text        PRIMARY KEY REFERENCES customers (account_id),
    max_order_notional  numeric(38, 2) CHECK (max_order_notional >= 0),
    max_order_qty       numeric(38, 9) CHECK (max_order_qty >= 0),
    max_daily_notional  numeric(38, 2) CHECK (max_daily_notional >= 0),
    max_daily_orders    bigint      CHECK (max_daily_orders >= 0),
    updated_by          text        NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- What an account's accepted orders used of one day's limits (the New York date of their
-- acceptance). Counted by the reserve that accepts the order, compare-and-set on version.
CREATE TABLE risk_usage (
    account_id  text        NOT NULL REFERENCES customers (account_id),
    day         date        NOT NULL,
    notional    numeric(38, 2) NOT NULL DEFAULT 0 CHECK (notional >= 0),  -- cents, rounded up
    orders      bigint      NOT NULL DEFAULT 0 CHECK (orders >= 0),
    version     bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, day)
);

-- The firm-wide trading state: one row, changed by compare-and-set on version.
CREATE TABLE trading_state (
    id          smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    state       text        NOT NULL CHECK (state IN ('ACTIVE', 'REDUCING', 'HALTED')),
    reason      text        NOT NULL,
    changed_by  text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint      NOT NULL DEFAULT 0
);
INSERT INTO trading_state (state, reason, changed_by) VALUES ('ACTIVE', 'initial', 'migration');

-- Every change of the trading state, append-only (the application role may only insert).
CREATE TABLE trading_state_log (
    id          bigserial   PRIMARY KEY,
    version     bigint      NOT NULL UNIQUE,
    state       text        NOT NULL CHECK (state IN ('ACTIVE', 'REDUCING', 'HALTED')),
    previous    text        NOT NULL,
    reason      text        NOT NULL,
    changed_by  text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
