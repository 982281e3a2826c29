-- A large history for the crawler scenario: finished builds on 1,000
-- builders `seed-0` .. `seed-999`, each build with :steps steps (8 unless
-- set) and one log per step, like years of a busy CI. A builder builds one
-- branch (`3.14` for every fourth, else `main`); every revision is built
-- twice by each builder. Each run adds :batch
-- builds; bench/run.sh runs it until the database holds the history it
-- wants, and the API's index test seeds its own database with it, as the
-- Postgres superuser (foreign key checks are skipped for speed; every row
-- written here satisfies them).
--
--   psql -v batch=50000 [-v steps=8] [-v age='1 day'] -f bench/seed.sql
\if :{?steps}
\else
\set steps 8
\endif
-- How old the history is (`-v age='3 days'`).
\if :{?age}
\else
\set age '1 day'
\endif
set session_replication_role = replica;
set synchronous_commit = off;

insert into builders (name, description, tags, configured)
select 'seed-' || g, 'seeded history for the crawler benchmark', '{seed}', false
from generate_series(0, 999) g
on conflict (name) do nothing;
insert into workers (name) values ('seed-worker') on conflict (name) do nothing;
insert into masters (name) values ('seed') on conflict (name) do nothing;

with sets as (
    insert into buildsets (reason, scheduler, submitted_at, complete, complete_at, results)
    select 'seed', 'seed', now() - interval :'age', true, now() - interval :'age', 0
    from generate_series(1, :batch)
    returning id, submitted_at
), seed_builders as (
    select id, substr(name, 6)::int as slot from builders where name like 'seed-%'
), requests as (
    insert into buildrequests (buildset_id, builder_id, state, submitted_at, claimed_at, complete_at, results)
    select sets.id, seed_builders.id, 'complete', sets.submitted_at, sets.submitted_at, sets.submitted_at, 0
    from sets join seed_builders on seed_builders.slot = sets.id % 1000
    returning id, builder_id, buildset_id, submitted_at
), builds as (
    -- Consecutive buildsets of one builder get consecutive numbers.
    insert into builds (builder_id, number, buildrequest_id, worker_id, master_id, claim_token, started_at,
                        complete_at, results, state_string, lease_expires_at, properties)
    select requests.builder_id, 1 + requests.buildset_id / 1000, requests.id,
           (select id from workers where name = 'seed-worker'), (select id from masters where name = 'seed'),
           gen_random_uuid(), requests.submitted_at, requests.submitted_at + interval '5 minutes', 0, 'build successful',
           requests.submitted_at,
           jsonb_build_object(
               'branch', jsonb_build_array(case when requests.buildset_id % 4 = 0 then '3.14' else 'main' end, 'seed'),
               'revision', jsonb_build_array(md5((requests.buildset_id / 2000)::text), 'seed'))
    from requests
    returning id, started_at
), steps as (
    insert into steps (build_id, number, name, started_at, complete_at, results, state_string)
    select builds.id, n, 'step ' || n, builds.started_at, builds.started_at + interval '30 seconds', 0, 'exit code 0'
    from builds cross join generate_series(0, :steps - 1) n
    returning id
)
insert into logs (step_id, name, slug, num_lines, num_bytes, complete)
select id, 'stdio', 'stdio', 120, 6000, true from steps;
