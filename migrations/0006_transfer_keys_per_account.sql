-- A deposit's or withdrawal's idempotency key is the caller's, and is now scoped by account
-- (issue 11): the ledger stores it as '<account>/<key>', so two customers who both chose the key
-- 'deposit-1' no longer collide (the second was refused, IdempotencyMismatch). Account ids
-- cannot contain '/', so the scoped key is unambiguous.
--
-- Records stored before this migration are rewritten to the scoped form, so a retry of a
-- transfer made before it (same account, same key) still finds its first result and books
-- nothing twice. The account is the one the first result names. The journal keeps the keys it
-- was written with (it is immutable); new entries carry scoped keys.
UPDATE ledger_operations
   SET key = (result::jsonb ->> 'account_id') || '/' || key
 WHERE operation IN ('deposit', 'withdraw')
   AND result::jsonb ->> 'account_id' IS NOT NULL;
