-- Settlement of sale proceeds, T+1 (issue 17, part 4; docs/LEDGER.md "Settlement").
-- A sale's proceeds land in the customer's available cash at once (a buy may spend them), and
-- are also recorded here as an unsettled lot, in the same transaction as the fill's posting,
-- until their settlement date: the trade date's next XNYS session. A withdrawal may take only
-- settled cash (available less the open lots, never below zero). The settlement job marks the
-- lots due as settled (compare-and-set on version); no balance moves, so no journal entry.
CREATE TABLE unsettled_lots (
    id          bigserial   PRIMARY KEY,
    account_id  text        NOT NULL REFERENCES customers (account_id),
    asset       text        NOT NULL,                -- USD, or KRW for a sale paid out in won
    amount      numeric(38, 2) NOT NULL CHECK (amount > 0),
    trade_date  date        NOT NULL,                -- New York date of the fill's posting
    settles_on  date        NOT NULL,
    order_id    text        NOT NULL,                -- the order key '<account>/<order>'
    entry_id    bigint      NOT NULL UNIQUE REFERENCES journal_entries (id),  -- the fill's post
    settled     boolean     NOT NULL DEFAULT false,
    settled_at  timestamptz,
    settled_for date,                                -- the session date the job ran for
    version     bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT lot_settles_after_trade CHECK (settles_on > trade_date),
    CONSTRAINT lot_settled_together CHECK (settled = (settled_at IS NOT NULL))
);
-- What a withdrawal sums (an account's open lots) and what the job pages through (due lots).
CREATE INDEX unsettled_lots_open_idx ON unsettled_lots (account_id, asset) WHERE NOT settled;
CREATE INDEX unsettled_lots_due_idx ON unsettled_lots (id) WHERE NOT settled;
