-- Changes waiting for their branch to be quiet (a scheduler's
-- tree_stable_seconds): one row per scheduler and branch holding the newest
-- change; it is built once no other change came for that long, by exactly
-- one master (the row is taken with skip locked and deleted with the
-- buildset's commit).
create table scheduler_pending_changes (
    scheduler text not null,
    branch text not null,
    change_id bigint not null references changes (id) on delete cascade,
    due_at timestamptz not null,
    primary key (scheduler, branch)
);
