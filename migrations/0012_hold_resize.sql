-- A replaced order's hold is resized (issue 16, part 5): it grows, under the account lock, to
-- cover the larger of the old and the new broker order, and shrinks once the broker confirms.
-- A resize is journaled (code 'resize') and idempotent (operation 'resize') like the others.
ALTER TABLE journal_entries
    DROP CONSTRAINT journal_entries_code_check,
    ADD CONSTRAINT journal_entries_code_check
        CHECK (code IN ('deposit', 'withdraw', 'reserve', 'post', 'void', 'error_fill', 'resize'));
ALTER TABLE ledger_operations
    DROP CONSTRAINT ledger_operations_operation_known,
    ADD CONSTRAINT ledger_operations_operation_known
        CHECK (operation IN ('deposit', 'withdraw', 'reserve', 'post', 'void', 'error_fill',
                             'resize'));
