-- The API's needs: a worker asked to shut down says so until it comes back,
-- and build requests are listed by builder (newest first) without a scan.

alter table workers add column graceful boolean not null default false;

create index buildrequests_by_builder on buildrequests (builder_id, id);
