-- buildmaster's system of record. Masters are stateless; everything that must
-- survive lives here. Migrations are append-only: never edit one that was
-- applied; add a new one that works while the previous master version still
-- serves (expand, then contract).

-- Every master that ever ran; `last_seen_at` tells which are alive.
create table masters (
    id            serial primary key,
    name          text not null unique,
    started_at    timestamptz not null default now(),
    last_seen_at  timestamptz not null default now()
);

-- Builders as configured; rows stay when a builder leaves master.yaml so its
-- history keeps its name.
create table builders (
    id                 serial primary key,
    name               text not null unique,
    description        text,
    tags               text[] not null default '{}',
    -- Next build number; bumped under a row lock in the claim, so numbers
    -- are gapless and unique even when masters claim at once.
    next_build_number  integer not null default 1,
    configured         boolean not null default true
);

create table workers (
    id            serial primary key,
    name          text not null unique,
    info          jsonb not null default '{}',
    paused        boolean not null default false,
    first_seen_at timestamptz not null default now(),
    last_seen_at  timestamptz
);

-- One trigger (force, schedule, change): one set of requests, one per builder.
create table buildsets (
    id            bigserial primary key,
    reason        text not null,
    owner         text,
    scheduler     text not null,
    properties    jsonb not null default '{}',
    submitted_at  timestamptz not null default now(),
    complete      boolean not null default false,
    complete_at   timestamptz,
    results       smallint
);

-- A request for one build of one builder. `state` moves pending → claimed →
-- complete, and back to pending when a build is retried.
create table buildrequests (
    id                bigserial primary key,
    buildset_id       bigint not null references buildsets (id) on delete cascade,
    builder_id        integer not null references builders (id),
    priority          integer not null default 0,
    state             text not null default 'pending'
                      check (state in ('pending', 'claimed', 'complete')),
    submitted_at      timestamptz not null default now(),
    -- When a doorbell for it was last published; the reconciler rings again
    -- for requests nobody claimed for a while.
    announced_at      timestamptz,
    claimed_at        timestamptz,
    claimed_by_master_id integer references masters (id),
    complete_at       timestamptz,
    results           smallint
);

-- The claim's search: best pending request of one builder.
create index buildrequests_pending_by_builder
    on buildrequests (builder_id, priority desc, submitted_at, id)
    where state = 'pending';
create index buildrequests_by_buildset on buildrequests (buildset_id);

create table builds (
    id               bigserial primary key,
    builder_id       integer not null references builders (id),
    number           integer not null,
    buildrequest_id  bigint not null references buildrequests (id) on delete cascade,
    worker_id        integer not null references workers (id),
    master_id        integer not null references masters (id),
    -- Chosen by the worker for one claim attempt; a retried claim with the
    -- same token gets the same build instead of a second one.
    claim_token      uuid not null unique,
    started_at       timestamptz not null default now(),
    complete_at      timestamptz,
    results          smallint,
    state_string     text not null default 'starting',
    properties       jsonb not null default '{}',
    -- Extended by the worker's heartbeats; a build whose lease expired has
    -- lost its worker.
    lease_expires_at timestamptz not null,
    unique (builder_id, number)
);

create index builds_by_buildrequest on builds (buildrequest_id);
create index builds_running_by_lease on builds (lease_expires_at) where complete_at is null;
create index builds_by_worker on builds (worker_id, id desc);

create table steps (
    id            bigserial primary key,
    build_id      bigint not null references builds (id) on delete cascade,
    number        integer not null,
    name          text not null,
    started_at    timestamptz,
    complete_at   timestamptz,
    results       smallint,
    state_string  text not null default '',
    hidden        boolean not null default false,
    urls          jsonb not null default '[]',
    unique (build_id, number)
);

create table logs (
    id          bigserial primary key,
    step_id     bigint not null references steps (id) on delete cascade,
    name        text not null,
    slug        text not null,
    type        char(1) not null default 's',
    num_lines   bigint not null default 0,
    num_bytes   bigint not null default 0,
    -- True once every chunk is archived here; until then the log is read
    -- from its Redis stream.
    complete    boolean not null default false,
    unique (step_id, slug)
);

-- Archived logs: zstd-compressed runs of (channel, bytes) records, in order.
create table log_chunks (
    log_id      bigint not null references logs (id) on delete cascade,
    seq         integer not null,
    first_line  bigint not null,
    num_lines   bigint not null,
    raw_bytes   integer not null,
    content     bytea not null,
    primary key (log_id, seq)
);

-- Which events were recorded, so that recording one twice changes nothing.
create table build_events (
    build_id     bigint not null references builds (id) on delete cascade,
    seq          bigint not null,
    recorded_at  timestamptz not null default now(),
    primary key (build_id, seq)
);
