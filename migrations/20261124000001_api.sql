-- The API's needs: a worker asked to shut down says so until it comes back;
-- pausing is versioned, so a worker told "pause" and "unpause" by two masters
-- at once keeps the last one committed; build requests are listed by builder
-- without a scan.

alter table workers add column graceful boolean not null default false;
alter table workers add column pause_version bigint not null default 0;

create index buildrequests_by_builder on buildrequests (builder_id, id);
