-- Why a master's last configuration reload was refused (checkconfig's
-- errors), shown in the API (`masters`) and on the web UI until a reload
-- succeeds; null while the files on disk are the ones applied.
alter table masters add column config_error text;
