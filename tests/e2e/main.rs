//! End-to-end tests: real PostgreSQL clusters, the real `shardcar` binary,
//! real clients (tokio-postgres, psql, pgbench, raw sockets).

mod harness;

mod auth;
mod cancel;
mod cli;
mod copy;
mod malformed;
mod prepared;
mod routing;
mod transactions;
