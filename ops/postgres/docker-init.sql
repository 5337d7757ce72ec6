-- The roles and database of docker-compose.kafka.yml's PostgreSQL, as ops/postgres/postgres.sh makes them for
-- `make services`: campaigns_owner owns the database and the schema (campaigns migrate connects as it; CREATEDB
-- and pg_signal_backend for the tests' own databases), campaigns reads and writes data and owns nothing.
-- Run once by the image's entrypoint on an empty data directory. Development passwords: never in production.
SET password_encryption = 'scram-sha-256';
CREATE ROLE campaigns_owner LOGIN NOSUPERUSER CREATEDB NOCREATEROLE PASSWORD 'campaigns_owner';
CREATE ROLE campaigns LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD 'campaigns';
GRANT pg_signal_backend TO campaigns_owner;
CREATE DATABASE campaigns OWNER campaigns_owner;
\connect campaigns
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO campaigns;
ALTER DEFAULT PRIVILEGES FOR ROLE campaigns_owner IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO campaigns;
ALTER DEFAULT PRIVILEGES FOR ROLE campaigns_owner IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO campaigns;
