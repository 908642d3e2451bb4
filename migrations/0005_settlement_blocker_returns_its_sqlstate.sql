-- wallet.settlement_blocker now returns (errcode, reason) instead of a reason alone, so
-- wallet.settle_deposit raises the blocker's SQLSTATE instead of reading it from the text.
-- A function's result type cannot be replaced in place: the old one is dropped here and
-- `wallet migrate` creates the new one from sql/delayed_deposits.sql right after.
-- depends: 0004_internal_helpers_inherit_search_path

DROP FUNCTION IF EXISTS wallet.settlement_blocker(wallet.transactions);
