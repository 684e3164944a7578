//! push-server: a drop-in replacement for the 1C-Bitrix Push server.
#![forbid(unsafe_code)]

pub mod config;
pub mod logger;
pub mod signature;
