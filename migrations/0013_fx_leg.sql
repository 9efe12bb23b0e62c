-- Won accounts with an FX leg (issue 17, part 1; docs/LEDGER.md "The FX desk").
-- The firm's FX desk: '$fx' rows (kind 'fx', sharded like the omnibus) in KRW and USD. A fill of
-- an order paid in won moves the won to the desk and the desk's dollars to the omnibus, in the
-- fill's own journal entry (each currency balanced on its own).
ALTER TABLE ledger_accounts
    DROP CONSTRAINT ledger_accounts_kind_check,
    ADD CONSTRAINT ledger_accounts_kind_check
        CHECK (kind IN ('customer', 'omnibus', 'fees', 'external', 'error', 'fx'));

-- A hold paid (or paying out) in another currency than USD: that currency and the won-per-dollar
-- rate fixed when the order was reserved (the ask for a buy, the bid for a sell). Every fill
-- converts at it and the void refunds at it. NULL: a USD order, as before.
ALTER TABLE holds
    ADD COLUMN pay_asset text,
    ADD COLUMN fx_rate numeric(20, 8),
    ADD CONSTRAINT hold_fx_together CHECK ((pay_asset IS NULL) = (fx_rate IS NULL)),
    ADD CONSTRAINT hold_fx_rate_positive CHECK (fx_rate IS NULL OR fx_rate > 0);
