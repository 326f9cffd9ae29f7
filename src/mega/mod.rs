//! The MEGA protocol, client side: transport, login and sessions, the node tree, transfers.

pub mod api;
pub mod error;
pub mod hashcash;
pub mod transfer;
pub mod wire;

pub use api::ApiClient;
pub use error::{ErrorCode, MegaError};
