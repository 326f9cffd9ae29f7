//! Registering a Filen account the way the official SDKs do by default: auth version 2, a
//! 256-hex-character salt used as text, PBKDF2-SHA512. A first login then stores the master-key
//! list, so any client finds the account complete.

use serde_json::json;

use super::FilenError;
use super::api::FilenApi;
use super::session::FilenSession;
use crate::crypto::filen::{self as fc, AuthVersion};

pub async fn register(server: &str, email: &str, password: &str) -> Result<(), FilenError> {
    let api = FilenApi::new(server)?;
    let salt = fc::random_hex(128);
    let derived = fc::derive_credentials(AuthVersion::V2, password, &salt)?;
    api.post(
        "register",
        &json!({
            "email": email, "password": derived.login_password.as_str(), "salt": salt,
            "authVersion": 2,
        }),
    )
    .await?;
    FilenSession::login(server, email, password).await?;
    Ok(())
}
