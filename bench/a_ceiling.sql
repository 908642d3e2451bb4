-- (a) The ceiling: one durable single-row UPDATE on a random row of 10,000.
\set n random(1, 10000)
UPDATE bench_counters SET value = value + 1 WHERE id = :n;
