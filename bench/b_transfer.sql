-- (b) A transfer of 100,000 (fee 600) between two distinct uniformly random wallets,
-- with a fresh idempotency key. to = from + an offset of 1..9999, wrapped: never from.
\set from random(1, 10000)
\set to 1 + (:from - 1 + random(1, 9999)) % 10000
SELECT wallet.transfer('bench', gen_random_uuid()::text, 'fp', NULL,
                       (SELECT wallet_id FROM bench_ids WHERE n = :from),
                       (SELECT wallet_id FROM bench_ids WHERE n = :to),
                       100000);
