//! Helpers shared by the integration tests. Each test binary includes this
//! module with `mod common;` and uses what it needs.
#![allow(dead_code)]

pub mod cluster;
pub mod proxy;
pub mod redis;
