//! The integration tests, as one binary (each file a module), so axum,
//! tonic and sqlx are linked once. Run one area with
//! `cargo test --all-features --test it -- security::`.

mod common;

mod bounds;
mod cache;
mod conformance;
mod example_server;
mod grpc;
mod key_api;
mod keys;
mod layer;
mod model;
mod observability;
mod openapi;
mod postgres;
mod properties;
mod replay;
mod security;
mod token;
mod validation;
