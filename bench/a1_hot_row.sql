-- (a1) The bound for c and d: one durable single-row UPDATE, every client on the same row.
-- A row lock is held until its transaction's commit is on disk, so one hot row commits one
-- transaction per WAL flush, whatever else the transaction does.
UPDATE bench_counters SET value = value + 1 WHERE id = 1;
