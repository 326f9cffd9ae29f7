//! Logging in to Filen and holding what the login unlocks: the API key, the master keys (every
//! one the account ever had; the password-derived, newest one first and used for writing), the
//! name hasher and the base folder.

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::FilenError;
use super::api::FilenApi;
use crate::crypto::filen::{
    self as fc, AuthVersion, DataVersion, MasterKeys, NameHasher, NameHmacKey,
};
use crate::crypto::rsa::OaepPrivateKey;

pub struct FilenSession {
    pub api: FilenApi,
    pub auth_version: AuthVersion,
    pub keys: MasterKeys,
    pub hasher: NameHasher,
    pub base_folder: String,
    pub user_id: u64,
    /// The data version new files are written with.
    pub file_version: DataVersion,
    /// Opens the metadata of items shared with this account (none before its first key pair).
    pub private_key: Option<OaepPrivateKey>,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str, FilenError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| FilenError::Protocol(format!("answer lacks {key}")))
}

impl FilenSession {
    /// `auth/info`, the key derivation, `login`, then the key material (reference §3.2).
    pub async fn login(server: &str, email: &str, password: &str) -> Result<Self, FilenError> {
        let api = FilenApi::new(server)?;
        let info = api.post("auth/info", &json!({"email": email})).await?;
        let version = AuthVersion::from_number(
            info.get("authVersion")
                .and_then(Value::as_u64)
                .ok_or_else(|| FilenError::Protocol("auth/info lacks authVersion".into()))?,
        )?;
        let salt = info.get("salt").and_then(Value::as_str).unwrap_or("");
        let derived = fc::derive_credentials(version, password, salt)?;
        let login = api
            .post(
                "login",
                &json!({
                    "email": email, "password": derived.login_password.as_str(),
                    "twoFactorCode": "XXXXXX", "authVersion": version.number(),
                }),
            )
            .await?;
        api.set_api_key(Some(Zeroizing::new(
            str_field(&login, "apiKey")?.to_string(),
        )));

        let keys = match version {
            AuthVersion::V1 | AuthVersion::V2 => {
                let mut keys = MasterKeys::for_account(version, &derived.master_key);
                // The server keeps the posted list only when it has none; it answers the
                // stored one, which after a password change holds every earlier key too.
                let stored = api
                    .post(
                        "user/masterKeys",
                        &json!({"masterKeys": keys.encrypted_list()}),
                    )
                    .await?;
                keys.merge_encrypted_list(str_field(&stored, "keys")?)?;
                keys
            }
            AuthVersion::V3 => {
                let wrapped = match login.get("dek").and_then(Value::as_str) {
                    Some(d) => Some(d.to_string()),
                    None => api
                        .get("user/dek")
                        .await?
                        .get("dek")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                };
                let dek = match wrapped {
                    Some(w) => fc::unwrap_dek(&derived.master_key, &w)?,
                    None => {
                        let dek = fc::generate_dek();
                        let wrapped = fc::wrap_dek(&derived.master_key, &dek);
                        api.post("user/dek", &json!({"dek": wrapped})).await?;
                        dek
                    }
                };
                MasterKeys::for_account(version, &dek)
            }
        };
        // The key pair: other users share to its public half; its private half opens what
        // they share, and (auth v3) keys the name hashes. Accounts get one at their first
        // login in a Filen app; until then nothing can be shared with them.
        let pair = api.get("user/keyPair/info").await?;
        let private_b64 = match pair
            .get("privateKey")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(wrapped) => Some(Zeroizing::new(keys.decrypt_metadata(wrapped)?)),
            None => None,
        };
        let private_key = match &private_b64 {
            Some(b64) => Some(OaepPrivateKey::from_pkcs8_b64(b64)?),
            None => None,
        };
        let hasher = match (version, &private_b64) {
            (AuthVersion::V3, Some(b64)) => NameHasher::V3(NameHmacKey::from_private_key_b64(b64)?),
            (AuthVersion::V3, None) => {
                return Err(FilenError::Protocol(
                    "this auth-v3 account has no key pair yet; log in once with a Filen app to \
                     create it"
                        .into(),
                ));
            }
            _ => NameHasher::V1V2,
        };
        let base_folder = str_field(&api.get("user/baseFolder").await?, "uuid")?.to_string();
        let user_id = api
            .get("user/info")
            .await?
            .get("id")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok(FilenSession {
            api,
            auth_version: version,
            keys,
            hasher,
            base_folder,
            user_id,
            private_key,
            file_version: if version == AuthVersion::V3 {
                DataVersion::V3
            } else {
                DataVersion::V2
            },
        })
    }
}
