//! push-server: a drop-in replacement for the 1C-Bitrix Push server.
#![forbid(unsafe_code)]

pub mod signature;
