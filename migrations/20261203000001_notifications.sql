-- What reporters must tell, written in the same transaction as the event
-- that causes it (a build's first step starting, a build ending), so a
-- master dying after that commit cannot lose it. Any master delivers a row,
-- one master at a time (`leased_until`), retrying with backoff until
-- `state` is `sent`, `skipped` (the reporter's filters say nothing is told)
-- or `failed` (the reporter's horizon passed; `last_error` says why).
create table notifications (
    id            bigserial primary key,
    reporter      text not null,
    build_id      bigint not null references builds (id) on delete cascade,
    event         text not null check (event in ('started', 'finished')),
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
    unique (build_id, reporter, event)
);

create index notifications_due on notifications (due_at) where state = 'pending';
