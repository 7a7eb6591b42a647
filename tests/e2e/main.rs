//! End-to-end tests: the real server in-process on an ephemeral loopback port (and the real binary for
//! signals), driven by a real tonic client.

mod auth;
mod bad_input;
mod concurrency;
mod drift;
mod durability;
mod encodings;
mod episodes;
mod fuzz;
mod health_reflection;
mod idempotency;
mod lifecycle;
mod metrics;
mod persistence;
mod support;
mod tls;
