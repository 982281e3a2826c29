-- no-transaction
-- The queue's history over the last day (the installation's chart of
-- pending requests and their wait) reads requests by submission time.
-- Built concurrently, alone in its migration.
create index concurrently if not exists buildrequests_submitted_at on buildrequests (submitted_at);
