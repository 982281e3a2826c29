-- The ticks timed schedulers (nightly, periodic) have fired. Every master
-- tries every tick; the insert of the tick and of its buildset are one
-- statement, and the key lets exactly one master's through.
create table scheduler_ticks (
    scheduler text not null,
    tick timestamptz not null,
    fired_at timestamptz not null default now(),
    primary key (scheduler, tick)
);
