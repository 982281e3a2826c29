-- The pull-request loop's actions on GitHub (take the trigger label off a
-- pull request once its builds are scheduled; answer a `!buildbot` command
-- with what it scheduled, or why nothing) go through the same outbox as
-- reports: neither a build's nor a worker's, what to do is in `payload`.
-- `delivery`, GitHub's id of the webhook delivery that asked, enters each
-- once however often GitHub delivers it.
alter table notifications
    add column payload jsonb,
    add column delivery text,
    drop constraint notifications_check,
    drop constraint notifications_event_check,
    add constraint notifications_one_subject check (num_nonnulls(build_id, worker_id, payload) = 1),
    add constraint notifications_event_check check (event in (
        'started', 'finished', 'worker_missing', 'worker_back', 'remove_label', 'answer_command'));

create unique index notifications_once_per_delivery on notifications (delivery, event) where delivery is not null;
