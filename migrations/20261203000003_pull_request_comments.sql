-- The comment a `github_comment` reporter keeps on a pull request for a
-- builder (with `later_failures: edit`), edited with each later failure of
-- that builder instead of a new one added. The comment also carries a hidden marker, so one whose id was
-- not recorded (a master killed right after GitHub made it) is found again.
create table pull_request_comments (
    reporter      text not null,
    repository    text not null,
    pull_request  integer not null,
    builder       text not null,
    comment_id    bigint not null,
    updated_at    timestamptz not null default now(),
    primary key (reporter, repository, pull_request, builder)
);
