-- The permanent record of orders (outlasts Temporal's history retention).
-- Written first by the reserve (same transaction as the hold), then by the saga as it advances.
CREATE TABLE orders (
    account_id      text        NOT NULL,
    order_id        text        NOT NULL,
    workflow_id     text        NOT NULL,
    symbol          text        NOT NULL,
    side            text        NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type      text        NOT NULL CHECK (order_type IN ('market', 'limit')),
    time_in_force   text        NOT NULL CHECK (time_in_force IN ('day', 'gtc', 'ioc')),
    qty             numeric(38, 9) NOT NULL CHECK (qty > 0),
    limit_price     numeric(38, 9),
    params_hash     text        NOT NULL,
    status          text        NOT NULL,
    reason          text,
    broker_order_id text,
    filled_qty      numeric(38, 9) NOT NULL DEFAULT 0,
    filled_notional numeric(38, 9) NOT NULL DEFAULT 0,
    fees            numeric(38, 2) NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, order_id)
);
CREATE INDEX orders_status_idx ON orders (status, updated_at);
CREATE INDEX orders_symbol_idx ON orders (symbol);
