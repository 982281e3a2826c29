-- Test results as Buildbot's data API shapes them: a set per source (a
-- step's test runner summary; result files later), and a row per test in
-- it. A summary lists the failed tests by name; `tests_passed` is its count
-- of the others, when it gave one.
create table test_result_sets (
    id            bigserial primary key,
    builder_id    integer not null references builders (id),
    build_id      bigint not null references builds (id) on delete cascade,
    step_id       bigint not null references steps (id) on delete cascade,
    description   text not null,
    category      text not null,
    value_unit    text not null,
    tests_passed  integer,
    tests_failed  integer,
    complete      boolean not null default true
);

create index test_result_sets_by_build on test_result_sets (build_id);
create index test_result_sets_by_step on test_result_sets (step_id);

create table test_results (
    id                  bigserial primary key,
    builder_id          integer not null references builders (id),
    test_result_set_id  bigint not null references test_result_sets (id) on delete cascade,
    test_name           text,
    test_code_path      text,
    line                integer,
    duration_ns         bigint,
    value               text not null
);

create index test_results_by_set on test_results (test_result_set_id, id);
