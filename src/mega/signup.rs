//! Creating an account the way MEGA's own clients do for v2 accounts (mega-reference §7.1), and
//! finishing it with an RSA key pair so any client, megajs included, can log in right away.
//!
//! Every key is made here; the server only ever sees them wrapped. `veilfs signup` is the command
//! line around [`create_account`].

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::api::ApiClient;
use super::error::{MegaError, Result};
use super::session::check_tsid;
use crate::crypto::mega::{
    b64_decode_array, b64_encode, derive_v2, ecb_decrypt, ecb_encrypt, hashed_auth_key, v2_salt,
};
use crate::crypto::random_array;
use crate::crypto::rsa::MegaPrivateKey;
use crate::retry::RetryPolicy;

/// `ensure!` for protocol checks: a server answer that breaks them is malformed.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(MegaError::malformed(format!($($fmt)+)));
        }
    };
}

fn as_str<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    v.as_str().ok_or_else(|| {
        MegaError::malformed(format!("server answered {what} with {v}, not a string"))
    })
}

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| MegaError::malformed(format!("server answer lacks {key:?}: {v}")))
}

/// Unwraps `k` from a login answer and checks it is our master key.
fn check_master_key(k: &str, key: &[u8; 16], master_key: &[u8; 16]) -> Result<()> {
    let wrapped = b64_decode_array::<16>(k, "wrapped master key")?;
    let unwrapped = Zeroizing::new(ecb_decrypt(key, &wrapped)?);
    ensure!(
        unwrapped.as_slice() == master_key,
        "server returned a different master key"
    );
    Ok(())
}

/// Registers `email` with `password` on `server` and returns the new user handle.
pub async fn create_account(
    server: &str,
    email: &str,
    password: &str,
    name: &str,
) -> Result<String> {
    let email = email.to_lowercase();
    ensure!(email.contains('@'), "{email:?} is not an e-mail address");
    let api = ApiClient::new(server, RetryPolicy::default())?;
    let master_key = Zeroizing::new(random_array::<16>());

    // 1. An anonymous account, its master key wrapped with a throwaway password key.
    let ephemeral_key = Zeroizing::new(random_array::<16>());
    let r = random_array::<16>();
    let mut ts = r.to_vec();
    ts.extend(ecb_encrypt(&master_key, &r)?);
    let user = api
        .call(json!({"a": "up", "k": b64_encode(&ecb_encrypt(&ephemeral_key, &*master_key)?), "ts": b64_encode(&ts)}))
        .await
        ?;
    let user = as_str(&user, "up")?.to_string();

    // 2. Log into it by handle.
    let login = api.call(json!({"a": "us", "user": user})).await?;
    check_master_key(field(&login, "k")?, &ephemeral_key, &master_key)?;
    let tsid = field(&login, "tsid")?;
    check_tsid(&master_key, tsid, Some(&user))?;
    api.set_session(Some(tsid.to_string()));

    // 3. Attach e-mail and password: v2 salt, derived keys, hashed auth key.
    let client_random = random_array::<16>();
    let salt = v2_salt(&client_random);
    let derived = {
        let password = Zeroizing::new(password.as_bytes().to_vec());
        tokio::task::spawn_blocking(move || derive_v2(&password, &salt))
            .await
            .map_err(|e| MegaError::Network(e.to_string()))?
    };
    let code = api
        .call(json!({
            "a": "uc2",
            "n": b64_encode(name.as_bytes()),
            "m": b64_encode(email.as_bytes()),
            "crv": b64_encode(&client_random),
            "hak": b64_encode(&hashed_auth_key(&derived.auth_key)),
            "k": b64_encode(&ecb_encrypt(&derived.password_key, &*master_key)?),
            "v": 2,
        }))
        .await?;
    let Some(code) = code.as_str() else {
        return Err(MegaError::malformed(format!(
            "the server sent the confirmation by other means ({code}); it must allow open signup"
        )));
    };
    let confirmed = api.call(json!({"a": "ud2", "c": code})).await?;
    ensure!(
        confirmed.get(2).and_then(Value::as_str) == Some(user.as_str()),
        "confirmation answered for another account: {confirmed}"
    );

    // 4. Log in with the password, as any client will.
    api.set_session(None);
    let prelogin = api.call(json!({"a": "us0", "user": email})).await?;
    ensure!(
        prelogin.get("v").and_then(Value::as_i64) == Some(2)
            && field(&prelogin, "s")? == b64_encode(&salt),
        "prelogin does not return our salt: {prelogin}"
    );
    let auth = b64_encode(&derived.auth_key);
    let login = api
        .call(json!({"a": "us", "user": email, "uh": auth}))
        .await?;
    check_master_key(field(&login, "k")?, &derived.password_key, &master_key)?;
    let tsid = field(&login, "tsid")?;
    check_tsid(&master_key, tsid, Some(&user))?;
    api.set_session(Some(tsid.to_string()));

    // 5. The RSA key pair, without which megajs cannot log in.
    let key = tokio::task::spawn_blocking(MegaPrivateKey::generate)
        .await
        .map_err(|e| MegaError::Network(e.to_string()))??;
    let answer = api
        .call(json!({"a": "up", "pubk": key.public_key().to_b64(), "privk": key.to_wrapped(&master_key)}))
        .await
        ?;
    ensure!(
        as_str(&answer, "up")? == user,
        "key pair stored for another account"
    );
    // The temporary session has served its purpose; leave no credential behind.
    api.call(json!({"a": "sml"})).await?;

    // 6. Prove it: a normal login now yields a csid our private key opens.
    api.set_session(None);
    let login = api
        .call(json!({"a": "us", "user": email, "uh": auth}))
        .await?;
    let private = MegaPrivateKey::from_wrapped(&master_key, field(&login, "privk")?)?;
    let sid = private.decrypt_session_id(field(&login, "csid")?)?;
    api.set_session(Some(sid));
    let info = api.call(json!({"a": "ug"})).await?;
    ensure!(
        field(&info, "u")? == user,
        "session belongs to another user"
    );
    api.call(json!({"a": "sml"})).await?;
    Ok(user)
}
