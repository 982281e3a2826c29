-- A webhook delivery is recorded once by what it says (the SHA-256 of its
-- signed body), not only by the id its sender puts in an unsigned header:
-- a captured delivery sent again under another id changes nothing.
-- Nullable, so masters of the previous version keep inserting changes.
alter table changes add column payload_sha256 bytea;

-- When the masters ended a build because its lease expired (its worker
-- went away): what that worker reports later about it changes nothing.
alter table builds add column lease_lost_at timestamptz;
