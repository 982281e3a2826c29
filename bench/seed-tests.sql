-- Test results for the seeded history (bench/seed.sql): each seeded build
-- gets a test result set on its last step (about 400 tests, 5 skipped);
-- one build in ten fails one to three tests of a pool of 300 names, so
-- that across builders some tests fail now, some broke a while ago and
-- some failed and passed at one revision (flaky). Each run gives :batch
-- builds without a set theirs; bench/run.sh runs it until every seeded
-- build has one, as the Postgres superuser.
--
--   psql -v batch=200000 -f bench/seed-tests.sql
set session_replication_role = replica;
set synchronous_commit = off;

with picked as (
    select b.id, b.builder_id, s.id as step_id
    from builds b
    cross join lateral (select id from steps where build_id = b.id order by number desc limit 1) s
    where b.builder_id in (select id from builders where name like 'seed-%')
      and not exists (select 1 from test_result_sets t where t.build_id = b.id)
    order by b.id
    limit :batch
), sets as (
    insert into test_result_sets (builder_id, build_id, step_id, description, category, value_unit,
                                  tests_passed, tests_failed, tests_skipped, duration_ns, complete)
    select builder_id, id, step_id, 'junit.xml', 'pass_fail', 'result',
           400 - (case when id % 10 = 0 then 1 + id % 3 else 0 end),
           case when id % 10 = 0 then 1 + id % 3 else 0 end,
           5, 60000000000, true
    from picked
    returning id, build_id, builder_id, tests_failed
)
insert into test_results (builder_id, test_result_set_id, test_name, test_code_path, duration_ns, value, message)
select sets.builder_id, sets.id, 'test_' || ((sets.build_id / 10 + k * 7) % 300), 'test.seeded', 1000000, 'fail',
       'AssertionError: seeded failure'
from sets cross join generate_series(0, 2) k
where k < sets.tests_failed;
