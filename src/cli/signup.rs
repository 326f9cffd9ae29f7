//! `veilfs signup --server URL --email E [--password-file F]`: creates a MEGA v2 account the
//! way MEGA's own clients do (reference §7.1) and finishes it with an RSA key pair, so any
//! client, megajs included, can log in right away.
//!
//! Every key is made here; the server only ever sees them wrapped.

use anyhow::{Context as _, anyhow, bail, ensure};
use serde_json::{Value, json};
use std::path::PathBuf;
use zeroize::Zeroizing;

use crate::crypto::mega::{
    b64_decode, b64_decode_array, b64_encode, derive_v2, ecb_decrypt, ecb_encrypt, hashed_auth_key,
    v2_salt,
};
use crate::crypto::random_array;
use crate::crypto::rsa::{MegaPrivateKey, SID_LEN};
use crate::mega::ApiClient;
use crate::retry::RetryPolicy;

#[derive(clap::Args, Debug)]
pub struct SignupArgs {
    /// The server's URL, e.g. http://127.0.0.1:8787/
    #[arg(long, value_name = "URL")]
    pub server: String,
    #[arg(long)]
    pub email: String,
    /// File holding the password (its first line). Without it, VEILFS_PASSWORD is used.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Display name; defaults to the part of the e-mail before '@'.
    #[arg(long)]
    pub name: Option<String>,
}

/// Reads the password from `file` (first line, without its line ending) or `VEILFS_PASSWORD`.
pub fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<Zeroizing<String>> {
    let password = match file {
        Some(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading password file {}", path.display()))?,
            );
            Zeroizing::new(text.lines().next().unwrap_or("").to_string())
        }
        None => Zeroizing::new(
            std::env::var("VEILFS_PASSWORD")
                .map_err(|_| anyhow!("no password: give --password-file or set VEILFS_PASSWORD"))?,
        ),
    };
    ensure!(!password.is_empty(), "the password is empty");
    Ok(password)
}

pub async fn run(args: SignupArgs) -> anyhow::Result<()> {
    let password = read_password(args.password_file.as_deref())?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| args.email.split('@').next().unwrap_or("").to_string());
    let user = create_account(&args.server, &args.email, &password, &name).await?;
    println!(
        "created account {} (user handle {user})",
        args.email.to_lowercase()
    );
    Ok(())
}

fn as_str<'a>(v: &'a Value, what: &str) -> anyhow::Result<&'a str> {
    v.as_str()
        .ok_or_else(|| anyhow!("server answered {what} with {v}, not a string"))
}

fn field<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("server answer lacks {key:?}: {v}"))
}

/// Checks a `tsid` as the SDK does (§6.4): the user handle in the middle, and the last 16
/// bytes equal to the first 16 encrypted with our master key, which only a server holding our
/// `ts` can produce.
fn check_tsid(tsid: &str, user: &str, master_key: &[u8; 16]) -> anyhow::Result<()> {
    let raw = b64_decode(tsid).context("tsid is not base64")?;
    ensure!(raw.len() == SID_LEN, "tsid has {} bytes, not 43", raw.len());
    ensure!(&raw[16..27] == user.as_bytes(), "tsid names another user");
    ensure!(
        ecb_encrypt(master_key, &raw[..16])? == raw[27..],
        "tsid does not match our master key"
    );
    Ok(())
}

/// Unwraps `k` from a login answer and checks it is our master key.
fn check_master_key(k: &str, key: &[u8; 16], master_key: &[u8; 16]) -> anyhow::Result<()> {
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
) -> anyhow::Result<String> {
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
        .context("creating the account")?;
    let user = as_str(&user, "up")?.to_string();

    // 2. Log into it by handle.
    let login = api.call(json!({"a": "us", "user": user})).await?;
    check_master_key(field(&login, "k")?, &ephemeral_key, &master_key)?;
    let tsid = field(&login, "tsid")?;
    check_tsid(tsid, &user, &master_key)?;
    api.set_session(Some(tsid.to_string()));

    // 3. Attach e-mail and password: v2 salt, derived keys, hashed auth key.
    let client_random = random_array::<16>();
    let salt = v2_salt(&client_random);
    let derived = {
        let password = Zeroizing::new(password.as_bytes().to_vec());
        tokio::task::spawn_blocking(move || derive_v2(&password, &salt)).await?
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
        .await
        .context("registering the e-mail address")?;
    let Some(code) = code.as_str() else {
        bail!("the server sent the confirmation by other means ({code}); it must allow open signup")
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
        .await
        .context("logging in with the new password")?;
    check_master_key(field(&login, "k")?, &derived.password_key, &master_key)?;
    let tsid = field(&login, "tsid")?;
    check_tsid(tsid, &user, &master_key)?;
    api.set_session(Some(tsid.to_string()));

    // 5. The RSA key pair, without which megajs cannot log in.
    let key = tokio::task::spawn_blocking(MegaPrivateKey::generate).await??;
    let answer = api
        .call(json!({"a": "up", "pubk": key.public_key().to_b64(), "privk": key.to_wrapped(&master_key)}))
        .await
        .context("storing the key pair")?;
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
