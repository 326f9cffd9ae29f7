//! Logging in (`us0` + `us`), the saved session, and logging out.
//!
//! A session file lets a remount start without the password. It holds the session id and the
//! master key — whoever reads it can read the drive — so it is written 0600, atomically, and
//! never logged.

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

use super::api::ApiClient;
use super::error::{ErrorCode, MegaError, Result};
use super::nodes::KeyRing;
use super::wire::{Login, Prelogin};
use crate::crypto::mega as mc;
use crate::crypto::rsa::MegaPrivateKey;

/// What a login needs from the user.
pub struct Credentials {
    pub email: String,
    pub password: Zeroizing<String>,
    /// A current two-factor code, for accounts that have 2FA on.
    pub mfa_code: Option<String>,
}

/// A logged-in session: what every later request and every node decryption needs.
#[derive(Serialize, Deserialize)]
pub struct Session {
    /// The API gateway the session belongs to.
    pub server: String,
    pub email: String,
    pub user_handle: String,
    sid: String,
    /// Master key, base64.
    master_key: String,
    /// RSA private key blob wrapped with the master key, as the server gave it.
    privk: Option<String>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.sid.zeroize();
        self.master_key.zeroize();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.server)
            .field("email", &self.email)
            .field("user_handle", &self.user_handle)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Logs in with email and password and sets the session on `api`.
    pub async fn login(api: &ApiClient, credentials: &Credentials) -> Result<Session> {
        let email = credentials.email.trim().to_lowercase();
        let prelogin: Prelogin = parse(api.call(json!({"a": "us0", "user": email})).await?)?;
        let password = credentials.password.as_bytes();
        let attempts: Vec<([u8; 16], String)> = match prelogin.v {
            1 => {
                // MEGA's own clients derive v1 keys from one byte per UTF-16 unit, megajs and
                // friends from UTF-8; they agree on ASCII. Try the official form first.
                let sdk = mc::password_bytes_v1_sdk(&credentials.password);
                let mut forms = vec![Zeroizing::new(sdk)];
                if !credentials.password.is_ascii() {
                    forms.push(Zeroizing::new(password.to_vec()));
                }
                let email = email.clone();
                tokio::task::spawn_blocking(move || {
                    forms
                        .iter()
                        .map(|bytes| {
                            let key = mc::prepare_key_v1(bytes);
                            let uh = mc::user_hash_v1(&email, &key);
                            (key, uh)
                        })
                        .collect()
                })
                .await
                .map_err(|e| MegaError::Network(e.to_string()))?
            }
            2 => {
                let salt = prelogin
                    .s
                    .as_deref()
                    .ok_or_else(|| MegaError::malformed("v2 prelogin without a salt"))?;
                let salt = mc::b64_decode(salt)?;
                let password = Zeroizing::new(password.to_vec());
                let keys = tokio::task::spawn_blocking(move || mc::derive_v2(&password, &salt))
                    .await
                    .map_err(|e| MegaError::Network(e.to_string()))?;
                vec![(keys.password_key, mc::b64_encode(&keys.auth_key))]
            }
            v => return Err(MegaError::malformed(format!("unknown account version {v}"))),
        };

        let mut last_error = MegaError::BadCredentials;
        for (mut password_key, uh) in attempts {
            let mut command = json!({"a": "us", "user": email, "uh": uh});
            if let Some(code) = &credentials.mfa_code {
                command["mfa"] = json!(code);
            }
            let result = match api.call(command).await {
                Ok(answer) => Self::from_login(api, &email, &password_key, parse(answer)?).await,
                Err(MegaError::Api(ErrorCode::NotFound)) => Err(MegaError::BadCredentials),
                Err(e) => Err(e),
            };
            password_key.zeroize();
            match result {
                Err(MegaError::BadCredentials) => last_error = MegaError::BadCredentials,
                other => return other,
            }
        }
        Err(last_error)
    }

    async fn from_login(
        api: &ApiClient,
        email: &str,
        password_key: &[u8; 16],
        login: Login,
    ) -> Result<Session> {
        let master = mc::ecb_decrypt(password_key, &mc::b64_decode(&login.k)?)?;
        let master: Zeroizing<[u8; 16]> = Zeroizing::new(
            master
                .as_slice()
                .try_into()
                .map_err(|_| MegaError::malformed("master key is not 16 bytes"))?,
        );
        let user_handle = login.u.clone().unwrap_or_default();
        let (sid, privk) = if let Some(csid) = &login.csid {
            let privk = login
                .privk
                .clone()
                .ok_or_else(|| MegaError::malformed("login answer with csid but no privk"))?;
            // A wrong password that still passed the server's check cannot happen, but a
            // garbled master key shows up here as a private key that does not parse.
            let private = MegaPrivateKey::from_wrapped(&master, &privk)?;
            (private.decrypt_session_id(csid)?, Some(privk))
        } else if let Some(tsid) = &login.tsid {
            check_tsid(&master, tsid, login.u.as_deref())?;
            api.set_session(Some(tsid.clone()));
            // An account that never logged in has no RSA keys; make them, as MEGA's clients do.
            let private = tokio::task::spawn_blocking(MegaPrivateKey::generate)
                .await
                .map_err(|e| MegaError::Network(e.to_string()))??;
            let privk = private.to_wrapped(&master);
            api.call(json!({"a": "up", "pubk": private.public_key().to_b64(), "privk": privk}))
                .await?;
            (tsid.clone(), Some(privk))
        } else {
            return Err(MegaError::malformed("login answer without csid or tsid"));
        };
        api.set_session(Some(sid.clone()));
        let user_handle = if user_handle.is_empty() {
            let ug = api.call(json!({"a": "ug"})).await?;
            ug.get("u")
                .and_then(|u| u.as_str())
                .ok_or_else(|| MegaError::malformed("ug answer without u"))?
                .to_string()
        } else {
            user_handle
        };
        Ok(Session {
            server: api.gateway().to_string(),
            email: email.to_string(),
            user_handle,
            sid,
            master_key: mc::b64_encode(&*master),
            privk,
        })
    }

    /// The stand-in session of a public folder link: no session id, the folder's share key in
    /// the master key's place and the folder's root handle as "us" (mega-reference §8.3), so
    /// the key ring opens every node of the link.
    pub fn public_folder(server: &str, root: &str, key: &[u8; 16]) -> Session {
        Session {
            server: server.to_string(),
            email: String::new(),
            user_handle: root.to_string(),
            sid: String::new(),
            master_key: mc::b64_encode(key),
            privk: None,
        }
    }

    /// Makes `api` use this session.
    pub fn activate(&self, api: &ApiClient) {
        api.set_session(Some(self.sid.clone()));
    }

    pub fn master_key(&self) -> Result<Zeroizing<[u8; 16]>> {
        Ok(Zeroizing::new(mc::b64_decode_array::<16>(
            &self.master_key,
            "master key",
        )?))
    }

    /// The keys that open this account's nodes.
    pub fn key_ring(&self) -> Result<KeyRing> {
        let master = self.master_key()?;
        let private = match &self.privk {
            Some(privk) => Some(MegaPrivateKey::from_wrapped(&master, privk)?),
            None => None,
        };
        Ok(KeyRing::new(&self.user_handle, *master, private))
    }

    /// Ends the session on the server (`sml`).
    pub async fn logout(self, api: &ApiClient) -> Result<()> {
        api.call(json!({"a": "sml"})).await?;
        api.set_session(None);
        Ok(())
    }

    /// Writes the session to `path`, mode 0600, atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = Zeroizing::new(serde_json::to_vec_pretty(self).expect("session serializes"));
        crate::util::write_private_file(path, &json)
            .map_err(|e| MegaError::SessionFile(format!("{}: {e}", path.display())))
    }

    /// Reads a session saved by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<Session> {
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| MegaError::SessionFile(format!("{}: {e}", path.display())))?,
        );
        serde_json::from_slice(&bytes)
            .map_err(|e| MegaError::SessionFile(format!("{}: {e}", path.display())))
    }
}

/// A temporary session id (account without RSA keys) is `r16 ‖ user handle (11) ‖ AES(master, r16)`:
/// only a server holding our master key's proof can make one, and it must name `user` when given.
pub(crate) fn check_tsid(master: &[u8; 16], tsid: &str, user: Option<&str>) -> Result<()> {
    let bytes = mc::b64_decode(tsid)?;
    if bytes.len() != 43
        || user.is_some_and(|u| u.as_bytes() != &bytes[16..27])
        || mc::ecb_encrypt(master, &bytes[..16])? != bytes[27..43]
    {
        return Err(MegaError::BadCredentials);
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| MegaError::malformed(e.to_string()))
}
