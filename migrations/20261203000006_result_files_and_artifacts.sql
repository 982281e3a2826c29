-- Test results read from a step's JUnit XML files carry more than a
-- runner's summary: a message per failed test, where the test's name first
-- appears in the step's log (to link to it), and the set's skipped tests
-- and duration.
alter table test_results
    add column message text,
    add column log_line bigint;

alter table test_result_sets
    add column tests_skipped integer,
    add column duration_ns bigint;

-- Whether a test failed in a build is asked per build and test name (the
-- Tests page walks back through a builder's builds).
create index test_results_by_set_and_name on test_results (test_result_set_id, test_name);

-- Files a step kept (`artifacts:`), stored compressed in chunks beside the
-- build, as logs are; retention deletes their contents with the logs'
-- (`deleted_at` says when) and the rows with the build.
create table artifacts (
    id          bigserial primary key,
    build_id    bigint not null references builds (id) on delete cascade,
    step_id     bigint not null references steps (id) on delete cascade,
    name        text not null,
    bytes       bigint not null,
    sha256      text not null,
    created_at  timestamptz not null default now(),
    deleted_at  timestamptz,
    unique (step_id, name)
);

create index artifacts_by_build on artifacts (build_id);

create table artifact_chunks (
    artifact_id  bigint not null references artifacts (id) on delete cascade,
    seq          integer not null,
    raw_bytes    integer not null,
    content      bytea not null,
    primary key (artifact_id, seq)
);
