//! MEGA's negative error codes, as the server answers them.
//!
//! Every failure a command can meet maps to one of these; nothing reaches the client as an HTTP
//! error status, because MEGA clients only understand the negative numbers (megajs treats any
//! non-200 API answer as fatal).

/// A MEGA API error. The discriminants are the codes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    Internal = -1,
    Args = -2,
    Again = -3,
    RateLimit = -4,
    Failed = -5,
    TooMany = -6,
    Range = -7,
    Expired = -8,
    NotFound = -9,
    Circular = -10,
    Access = -11,
    Exist = -12,
    Incomplete = -13,
    Key = -14,
    Sid = -15,
    Blocked = -16,
    OverQuota = -17,
}

impl ApiError {
    pub fn code(self) -> i64 {
        self as i64
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MEGA error {:?} ({})", self, self.code())
    }
}

impl std::error::Error for ApiError {}

// Storage failures are our fault, not the client's: they are logged here, once, and reach the
// client as EINTERNAL without details.
impl From<sled::Error> for ApiError {
    fn from(e: sled::Error) -> Self {
        tracing::error!(error = %e, "metadata store failure");
        ApiError::Internal
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        tracing::error!(error = %e, "blob store failure");
        ApiError::Internal
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        tracing::error!(error = %e, "corrupt metadata record");
        ApiError::Internal
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        tracing::error!(error = %e, "background task failed");
        ApiError::Internal
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
