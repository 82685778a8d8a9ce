//! shardcar: a per-pod sidecar that makes sharded PostgreSQL look like one
//! database. The modules follow the path of a statement: frontend →
//! classify → route (policy) → session → scatter, with pools, settings and cancel
//! beside them, and telemetry watching all of it.

pub mod admin;
pub mod auth_query;
pub mod authoring;
pub mod builtin;
pub mod cancel;
pub mod classify;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod frontend;
pub mod limits;
pub mod localpg;
pub mod metrics;
pub mod panics;
pub mod passthrough;
pub mod policy;
pub mod pool;
pub mod route;
pub mod scatter;
pub mod secret;
pub mod server;
pub mod settings;
pub mod shared;
pub mod sqlerror;
pub mod telemetry;
pub mod tls;
pub mod topology;
pub mod twophase;
pub mod watched;
pub mod wire;
pub mod workload;
