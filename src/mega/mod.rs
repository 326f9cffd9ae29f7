//! The MEGA protocol, client side: transport, login and sessions, the node tree, transfers.

pub mod api;
pub mod client;
pub mod error;
pub mod fetch;
pub mod fingerprint;
pub mod hashcash;
pub mod nodes;
pub mod remote;
pub mod session;
pub mod signup;
pub mod transfer;
pub mod upload_urls;
pub mod wire;

pub use api::ApiClient;
pub use client::{MegaClient, NewContent, NewNode, Quota};
pub use error::{ErrorCode, MegaError};
