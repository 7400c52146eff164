//! simverify: a gRPC gateway that verifies mobile subscriber records against a
//! keyed-hash mirror of Vietnam's National Population Database.
//!
//! See `ARCHITECTURE.md` for the map. Layers, innermost first: [`domain`]
//! (pure rules), [`store`] and [`audit`] (persistence), [`cache`],
//! [`verifier`] (the use case), [`grpc`] and [`cli`] (the edges).

pub mod audit;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod r#gen;
pub mod grpc;
pub mod mirror;
pub mod pki;
pub mod proto;
pub mod store;
pub mod telemetry;
pub mod verifier;
