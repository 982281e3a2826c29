-- Logins on the web. The cookie holds a random token; only its SHA-256 is
-- stored, so a copy of the database opens no session. Roles are not kept
-- here: they are read from settings.yaml on every action, so a reload
-- changes what a logged-in user may do at once. The fingerprint of the
-- password hash a session was opened with ends it when the password changes.
create table sessions (
    token_sha256 bytea primary key,
    user_name text not null,
    password_fingerprint text not null,
    csrf_token text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);

create index sessions_expires_at on sessions (expires_at);
