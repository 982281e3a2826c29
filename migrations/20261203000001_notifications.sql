-- What reporters must tell, written in the same transaction as the event
-- that causes it (a build's first step starting, a build ending, a worker
-- found missing or back), so a master dying after that commit cannot lose
-- it. Any master delivers a row, one master at a time (`leased_until`),
-- retrying with backoff until `state` is `sent`, `skipped` (the reporter's
-- filters say nothing is told) or `failed` (the reporter's horizon passed;
-- `last_error` says why).
create table notifications (
    id            bigserial primary key,
    reporter      text not null,
    -- A build's notification, or a worker's (exactly one of the two).
    build_id      bigint references builds (id) on delete cascade,
    worker_id     integer references workers (id) on delete cascade,
    event         text not null
                  check (event in ('started', 'finished', 'worker_missing', 'worker_back')),
    created_at    timestamptz not null default now(),
    state         text not null default 'pending'
                  check (state in ('pending', 'sent', 'skipped', 'failed')),
    attempts      integer not null default 0,
    due_at        timestamptz not null default now(),
    leased_until  timestamptz,
    last_error    text,
    done_at       timestamptz,
    -- What was sent, in the target's words (a status context, a message
    -- summary), for the build page.
    detail        text,
    unique (build_id, reporter, event),
    check ((build_id is null) <> (worker_id is null))
);

create index notifications_due on notifications (due_at) where state = 'pending';

-- When a worker's admins were told it is missing; cleared when it is seen
-- again (and they are told it is back).
alter table workers add column missing_told_at timestamptz;
