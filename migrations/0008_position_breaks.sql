-- Positions and cash reconciled against the omnibus ledger (issue 15, part 2): two more kinds of
-- break. A position break's order_key is the symbol; a cash break's is 'USD'.
ALTER TABLE reconcile_breaks DROP CONSTRAINT reconcile_breaks_kind_check;
ALTER TABLE reconcile_breaks ADD CONSTRAINT reconcile_breaks_kind_check
    CHECK (kind IN ('late_order', 'fill_mismatch', 'stuck', 'parked', 'position', 'cash'));
