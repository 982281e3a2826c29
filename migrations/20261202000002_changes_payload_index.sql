-- no-transaction
-- One change per delivered body. Built concurrently (alone in its
-- migration), so masters still running keep writing changes meanwhile.
create unique index concurrently if not exists changes_one_per_payload on changes (payload_sha256)
    where payload_sha256 is not null;
