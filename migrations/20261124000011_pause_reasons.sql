-- Why a worker is paused (shown to people), and builders that may be
-- paused too: their pending requests wait until they are unpaused.
alter table workers add column pause_reason text;
alter table builders add column paused boolean not null default false;
alter table builders add column pause_reason text;
