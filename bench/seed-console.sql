-- The console's history for the views scenario: 100 pushes to main, each
-- built by the 1,000 seeded builders (bench/seed.sql), 100,000 builds in
-- all. From the 60th change on, every twentieth builder fails, so the
-- console has a row where 50 builders turned red and the release board has
-- red builders. Run once, as the Postgres superuser, after bench/seed.sql.
--
--   psql -f bench/seed-console.sql
set session_replication_role = replica;
set synchronous_commit = off;

with made as (
    insert into changes (source, repository, branch, revision, author, comments, category, created_at)
    select 'bench-console', 'https://example.org/bench.git', 'main', md5('bench-console-' || g),
           'author-' || (g % 7), 'Change ' || g || E'\n\nWhat it does, at length.', 'push',
           now() - make_interval(mins => 200 - 2 * g)
    from generate_series(1, 100) g
    returning id, revision, created_at
), numbered as (
    select id, revision, created_at, row_number() over (order by id) as n from made
), sets as (
    insert into buildsets (reason, scheduler, submitted_at, complete, complete_at, results, change_id, properties)
    select 'bench console', 'bench-console', created_at, true, created_at + interval '5 minutes', 0, id,
           jsonb_build_object('branch', jsonb_build_array('main', 'Change'),
                              'revision', jsonb_build_array(revision, 'Change'),
                              'repository', jsonb_build_array('https://example.org/bench.git', 'Change'))
    from numbered
    returning id, change_id, submitted_at, properties
), seed_builders as (
    select b.id, substr(b.name, 6)::int as slot,
           (select coalesce(max(number), 0) from builds where builder_id = b.id) as top
    from builders b where b.name like 'seed-%'
), requests as (
    insert into buildrequests (buildset_id, builder_id, state, submitted_at, claimed_at, complete_at, results)
    select sets.id, seed_builders.id, 'complete', sets.submitted_at, sets.submitted_at,
           sets.submitted_at + interval '5 minutes', 0
    from sets cross join seed_builders
    returning id, builder_id, buildset_id, submitted_at
)
insert into builds (builder_id, number, buildrequest_id, worker_id, master_id, claim_token, started_at,
                    complete_at, results, state_string, lease_expires_at, properties)
select requests.builder_id, seed_builders.top + numbered.n, requests.id,
       (select id from workers where name = 'seed-worker'), (select id from masters where name = 'seed'),
       gen_random_uuid(), requests.submitted_at, requests.submitted_at + interval '5 minutes',
       case when seed_builders.slot % 20 = 0 and numbered.n >= 60 then 2 else 0 end,
       'build done', requests.submitted_at, sets.properties
from requests
join sets on sets.id = requests.buildset_id
join numbered on numbered.id = sets.change_id
join seed_builders on seed_builders.id = requests.builder_id;

analyze changes;
analyze buildsets;
