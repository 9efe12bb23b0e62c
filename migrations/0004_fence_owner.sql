-- Who wrote the newest fence: the order key of the reserve that carried it. A fencing token is
-- unique only while the lock's counter never goes back; if it does (a lost write, a restore, a
-- lagging replica) two orders can be handed the same fence, and the reserve's compare-and-set
-- then accepts an equal fence only from the owner that wrote it (its own retry). NULL for fences
-- written before this column existed: an equal fence is refused from everyone, so such an order
-- locks again and gets a greater one.
ALTER TABLE customers ADD COLUMN last_fence_owner text;
ALTER TABLE ledger_accounts ADD COLUMN last_fence_owner text;
