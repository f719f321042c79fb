-- krakenbook schema, version 3: the journal instance beside each collector's checkpoint.
--
-- A collector identity's seqs are only meaningful within one journal. Each journal has an
-- instance id (32 hex digits, its INSTANCE file); the writer records it here the first time
-- (a NULL is adopted) and refuses a different one, so a journal directory deleted and started
-- again, or another journal under the same identity, can never have its records skipped as
-- "already stored" because the database holds other records under the same seqs.
ALTER TABLE krakenbook_checkpoints ADD COLUMN IF NOT EXISTS journal_instance text;
