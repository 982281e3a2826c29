-- Changes from change sources (GitHub's webhook): written in the same
-- transaction as the buildsets they cause, before the webhook is answered,
-- so an acknowledged push is never lost. The delivery id makes a delivery
-- sent twice change nothing the second time.
create table changes (
    id bigserial primary key,
    delivery text unique,
    source text not null,
    repository text not null,
    branch text not null,
    revision text not null,
    author text not null default '',
    comments text not null default '',
    files jsonb not null default '[]',
    category text not null default '',
    created_at timestamptz not null default now()
);
