#!/bin/sh
# Runs once, when the PostgreSQL volume is first created (docker-entrypoint-initdb.d): one server,
# two owners. Stanch's records live in the `stanch` database; Temporal's auto-setup creates its own
# `temporal` and `temporal_visibility` databases as the `temporal` role.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v stanch_password="$STANCH_DB_PASSWORD" -v temporal_password="$TEMPORAL_DB_PASSWORD" <<'SQL'
CREATE ROLE stanch LOGIN PASSWORD :'stanch_password';
CREATE DATABASE stanch OWNER stanch;
CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'temporal_password';
SQL
