//! End-to-end tests: real PostgreSQL clusters, the real `shardcar` binary,
//! real clients (tokio-postgres, psql, pgbench, raw sockets).

mod harness;

mod admin_api;
mod auth;
mod auth_query;
mod backend_auth;
mod budget;
mod cancel;
mod cli;
mod client_tls;
mod compat;
mod console;
mod copy;
mod dashboard;
mod demo;
mod deploy;
mod dump;
mod extended;
mod failover;
mod faults;
mod fleet;
mod hotspots;
mod joins;
mod limits;
mod malformed;
mod one_postgres;
mod pgbench;
mod pki;
mod plugin_authoring;
mod plugin_languages;
mod plugin_safety;
mod plugins;
mod pool;
mod prepared;
mod routing;
mod scatter;
mod secrets;
mod shadow;
mod shard_tls;
mod startup;
mod traces;
mod transactions;
mod twophase;
