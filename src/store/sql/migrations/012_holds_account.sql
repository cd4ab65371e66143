-- Version 12: every hold carries its account (docs/scaling.md, proposal P2: Citus refuses a
-- NULL distribution value). agentkey has written it on every hold since version 3; a NULL
-- can only be a hold whose key was already gone when version 3 filled them in, or one a user
-- wrote by SQL. It is filled from its key; a hold whose key is gone gets '', the account of
-- rows without one elsewhere (the ledger's opening balances, events, the outbox). Such a hold
-- counts against no budget (no key names it), so '' changes nothing a charge decides.
-- The primary keys stay as they are: moving them to (account_id, id) locks a big table for
-- long, and is one of the steps taken when distributing (docs/scaling.md).
UPDATE {{holds}} h SET account_id = COALESCE(k.account_id::text, '')
  FROM {{table}} k WHERE h.account_id IS NULL AND k.id = h.key_id;

UPDATE {{holds}} SET account_id = '' WHERE account_id IS NULL;

ALTER TABLE {{holds}} ALTER COLUMN account_id SET NOT NULL;
