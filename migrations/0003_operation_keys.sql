-- Idempotency keys are per operation (issue 11, part 4). A key used to be unique across every
-- operation, so a deposit whose caller chose the key '<account>/<order>:void' took the key the
-- saga's void would use: the void was refused (IdempotencyMismatch) and the order's hold stayed
-- frozen. A key is now unique per (key, operation): a deposit's key names a deposit only, and no
-- caller-chosen key of one operation can ever be another operation's key.
--
-- Rows already stored keep their key and operation, so each keeps answering replays of its own
-- operation (an in-flight order's retried void finds its first result); nothing is rewritten.
-- The journal is keyed the same way (its code is the operation), and stays immutable.
ALTER TABLE ledger_operations
    DROP CONSTRAINT ledger_operations_pkey,
    ADD PRIMARY KEY (key, operation),
    ADD CONSTRAINT ledger_operations_operation_known
        CHECK (operation IN ('deposit', 'withdraw', 'reserve', 'post', 'void', 'error_fill'));

ALTER TABLE journal_entries
    DROP CONSTRAINT journal_entries_idempotency_key_key,
    ADD CONSTRAINT journal_entries_idempotency_key_code_key UNIQUE (idempotency_key, code);
