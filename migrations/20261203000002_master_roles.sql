-- Work the whole installation does from one place at a time, whichever
-- masters run: the IRC connection (one nickname on the network). The
-- holder renews `held_until`; another master takes the role only after it
-- passed, and a holder that cannot renew lets go before then.
create table master_roles (
    role        text primary key,
    master_id   integer not null references masters (id) on delete cascade,
    held_until  timestamptz not null
);
