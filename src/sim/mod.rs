//! The simulated legacy OMS used by `omsgate demo`, the integration tests and the benches.
//!
//! [`data`] generates the deterministic seed data (also used to seed PostgreSQL).

pub mod data;
