//! Errors of the MEGA protocol client.

use thiserror::Error;

use crate::crypto::CryptoError;

/// MEGA's negative error codes (mega-reference §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Internal,
    Args,
    Again,
    RateLimit,
    Failed,
    TooMany,
    Range,
    Expired,
    NotFound,
    Circular,
    Access,
    Exists,
    Incomplete,
    Key,
    Session,
    Blocked,
    OverQuota,
    TempUnavailable,
    TooManyConnections,
    MfaRequired,
    Other(i64),
}

impl ErrorCode {
    pub fn from_code(code: i64) -> Self {
        use ErrorCode::*;
        match code {
            -1 => Internal,
            -2 => Args,
            -3 => Again,
            -4 => RateLimit,
            -5 => Failed,
            -6 => TooMany,
            -7 => Range,
            -8 => Expired,
            -9 => NotFound,
            -10 => Circular,
            -11 => Access,
            -12 => Exists,
            -13 => Incomplete,
            -14 => Key,
            -15 => Session,
            -16 => Blocked,
            -17 => OverQuota,
            -18 => TempUnavailable,
            -19 => TooManyConnections,
            -26 => MfaRequired,
            other => Other(other),
        }
    }

    pub fn code(self) -> i64 {
        use ErrorCode::*;
        match self {
            Internal => -1,
            Args => -2,
            Again => -3,
            RateLimit => -4,
            Failed => -5,
            TooMany => -6,
            Range => -7,
            Expired => -8,
            NotFound => -9,
            Circular => -10,
            Access => -11,
            Exists => -12,
            Incomplete => -13,
            Key => -14,
            Session => -15,
            Blocked => -16,
            OverQuota => -17,
            TempUnavailable => -18,
            TooManyConnections => -19,
            MfaRequired => -26,
            Other(c) => c,
        }
    }

    /// Codes that mean "nothing happened, try again later".
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::Again
                | ErrorCode::RateLimit
                | ErrorCode::TempUnavailable
                | ErrorCode::TooManyConnections
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ErrorCode::*;
        let name = match self {
            Internal => "internal error",
            Args => "bad arguments",
            Again => "temporarily congested",
            RateLimit => "rate limited",
            Failed => "failed",
            TooMany => "too many attempts",
            Range => "out of range",
            Expired => "expired",
            NotFound => "not found",
            Circular => "circular linkage",
            Access => "access denied",
            Exists => "already exists",
            Incomplete => "incomplete",
            Key => "cryptographic error",
            Session => "session expired or invalid",
            Blocked => "blocked",
            OverQuota => "over quota",
            TempUnavailable => "temporarily unavailable",
            TooManyConnections => "too many connections",
            MfaRequired => "two-factor code required",
            Other(_) => "error",
        };
        write!(f, "{name} ({})", self.code())
    }
}

#[derive(Debug, Error)]
pub enum MegaError {
    /// The server answered a MEGA error code.
    #[error("server: {0}")]
    Api(ErrorCode),
    /// An HTTP status other than 200 that is not retried or ran out of retries.
    #[error("HTTP status {0}")]
    Http(u16),
    #[error("network: {0}")]
    Network(String),
    /// The connection broke while an answer read as it arrives was partly handed on: not
    /// retried here, since only the reader's owner can undo what it was given.
    #[error("answer cut off: {0}")]
    Cut(String),
    /// The server's answer does not have the shape the protocol gives it.
    #[error("malformed server reply: {0}")]
    Malformed(String),
    #[error("wrong email or password")]
    BadCredentials,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("session file: {0}")]
    SessionFile(String),
}

impl MegaError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            MegaError::Api(c) => Some(*c),
            _ => None,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        MegaError::Malformed(what.into())
    }
}

pub type Result<T> = std::result::Result<T, MegaError>;
