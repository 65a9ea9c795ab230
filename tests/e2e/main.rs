//! Signet's end-to-end tests: the real `signet` binary as CA, agents and
//! proxies, real TLS on loopback sockets, SQLite files and a real
//! PostgreSQL, and clients we did not write (go-spiffe, py-spiffe, grpcio,
//! OpenSSL). One binary, a module per topic; helpers are in the
//! `signet-test-support` crate. The few tests that must run alone (fault
//! injection, network namespaces, the README walkthrough) are in
//! `tests/solo`.

mod agent;
mod ca;
mod clients;
mod conformance;
mod dev;
mod examples;
mod jwt;
mod keys;
mod limits;
mod mesh;
mod node_attestation;
mod proxy;
mod sync;
mod tunnel;
