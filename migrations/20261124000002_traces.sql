-- A build request remembers the trace that asked for it (W3C traceparent),
-- so its doorbells, its claim and its build join that trace, whichever
-- master or worker handles them and however much later.
alter table buildrequests add column traceparent text;
