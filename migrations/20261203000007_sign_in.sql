-- Signing in with GitHub and OpenID Connect providers.
--
-- A session now says which provider vouched for its user. Local users'
-- roles are still read from settings.yaml on every action (`roles` is
-- null); a provider's user's roles are kept here, read at sign-in and, for
-- GitHub, again when `roles_checked_at` is older than the refresh
-- interval, with the person's own GitHub token, kept encrypted under a key
-- derived from the OAuth App's secret (a copy of the database reads no
-- token).
alter table sessions
    add column provider text not null default 'local',
    add column roles text[],
    add column roles_checked_at timestamptz,
    add column provider_token bytea;

-- A sign-in under way: what the callback must match. Used once (deleted
-- as it is read), and only for a few minutes.
create table sign_in_attempts (
    state_sha256 bytea primary key,
    provider text not null,
    nonce text not null,
    pkce_verifier text not null,
    return_to text not null,
    expires_at timestamptz not null
);

create index sign_in_attempts_expires_at on sign_in_attempts (expires_at);

-- Who may act as the owner of a buildset's builds: the signed-in person who
-- forced or rebuilt it (`local:alice`, `github:octocat`, `oidc:sso:bob`), or
-- the GitHub user whose pull-request action started it. `owner` stays the
-- display name Buildbot's API shows.
alter table buildsets add column owned_by text;
