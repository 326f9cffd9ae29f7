//! `veilfs serve --data DIR [--listen ADDR]`: runs the MEGA-compatible server until Ctrl-C or
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::server::{S3Location, ServerConfig, SignupPolicy};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Directory for accounts, metadata and encrypted file content (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Address and port to listen on; port 0 picks a free one (printed at start).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Base URL clients reach this server at, used in transfer URLs (e.g. behind a TLS
    /// proxy). Defaults to the Host header of each request.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Storage quota of each new account: bytes, or with a K, M, G or T suffix (binary units).
    #[arg(long, default_value = "20G", value_parser = parse_size)]
    pub quota: u64,
    /// Who may create accounts: `open` (anyone who reaches the server) or `closed`.
    #[arg(long, default_value = "open", value_parser = parse_signup)]
    pub signup: SignupPolicy,
    /// Keep encrypted file content in this S3 bucket instead of under --data (metadata stays
    /// there). Endpoint, region and credentials come from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; plain http is allowed to a loopback
    /// endpoint, elsewhere only with AWS_ALLOW_HTTP=true.
    #[arg(long, value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// Key prefix inside the S3 bucket, so several servers can share one.
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "",
        requires = "s3_bucket"
    )]
    pub s3_prefix: String,
}

/// Parses `123`, `10K`, `5M`, `20G`, `1T` (powers of 1024; a trailing `B`/`iB` is allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches('i');
    let (digits, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 500M or 20G"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_signup(s: &str) -> Result<SignupPolicy, String> {
    match s {
        "open" => Ok(SignupPolicy::Open),
        "closed" => Ok(SignupPolicy::Closed),
        _ => Err(format!("{s:?}: expected open or closed")),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::new(args.data, args.listen);
    config.public_url = args.public_url;
    config.default_quota = args.quota;
    config.signup = args.signup;
    config.s3 = args.s3_bucket.map(|bucket| S3Location {
        bucket,
        prefix: args.s3_prefix,
        settings: Vec::new(),
    });
    let server = crate::server::start(config).await?;
    // Scripts and tests read the actual address from this line (the port may have been 0).
    println!("veilfs serve: listening on {}", server.url());
    Ok(server.run_until_signal().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("10K"), Ok(10 << 10));
        assert_eq!(parse_size("5MiB"), Ok(5 << 20));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
