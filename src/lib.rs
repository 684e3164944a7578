//! push-server: a drop-in replacement for the 1C-Bitrix Push server.
#![forbid(unsafe_code)]

pub mod channel;
pub mod message;
pub mod query;
pub mod signature;
