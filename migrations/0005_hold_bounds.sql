-- The hold knows its order's bounds (issue 11, part 1): the order's quantity and, for a limit or
-- capped order, its price bound (the most a buy may pay per share, the least a sell may receive;
-- NULL for a market sell). The reserve sets them; the database then refuses a post beyond them
-- by itself, whatever the code that writes the hold checked first.
--
-- Holds made before this migration have no bounds recorded (NULL): a CHECK whose expression is
-- NULL passes, so they are not checked and every existing row satisfies the constraints.
ALTER TABLE holds
    ADD COLUMN qty          numeric(38, 9) CHECK (qty > 0),
    ADD COLUMN limit_price  numeric        CHECK (limit_price > 0),  -- exact, like the notional
    ADD CONSTRAINT hold_within_qty CHECK (posted_qty <= qty),
    ADD CONSTRAINT hold_buy_within_limit
        CHECK (side <> 'buy' OR posted_notional <= posted_qty * limit_price),
    ADD CONSTRAINT hold_sell_within_limit
        CHECK (side <> 'sell' OR posted_notional >= posted_qty * limit_price);
