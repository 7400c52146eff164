//! One integration-test binary: the real gateway on port 0, real gRPC
//! clients over real sockets, and both storage backends (SQLite in a temp
//! dir, PostgreSQL on 127.0.0.1:5432 with a fresh database per test).

mod helpers;

mod access;
mod audit;
mod batch;
mod cli;
mod hardening;
mod privacy;
mod python;
mod store;
mod stream;
mod tamper;
mod telemetry;
mod verify;
