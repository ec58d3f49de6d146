-- Runs once, when the postgres service starts on an empty data volume (/docker-entrypoint-initdb.d).
-- The PostgreSQL destination and Dagster's own storage (runs, event log, offsets) share the server, never a database.
CREATE DATABASE cdc;
CREATE DATABASE dagster;
