//! shardcar: a per-pod sidecar that makes sharded PostgreSQL look like one
//! database. The modules follow the path of a statement: frontend →
//! classify → policy → plan → execute, with pools, settings and cancel
//! beside them, and telemetry watching all of it.

pub mod admin;
pub mod cancel;
pub mod classify;
pub mod config;
pub mod demo;
pub mod execute;
pub mod frontend;
pub mod localpg;
pub mod panics;
pub mod plan;
pub mod policy;
pub mod pool;
pub mod scatter;
pub mod server;
pub mod settings;
pub mod sqlerror;
pub mod telemetry;
pub mod twophase;
pub mod workload;
