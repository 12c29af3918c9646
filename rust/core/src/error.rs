//! The core's only error type. Expected outcomes (shed, no backend) are decisions, not errors:
//! an error here always means the caller misused the API or sent a body that is not a request.
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// The body is not a valid OpenAI request; `param` names the offending field when one is to blame.
    MalformedRequest {
        param: Option<String>,
        message: String,
    },
    InvalidConfig(String),
    UnknownTicket(u64),
    /// A wait id that is not (or no longer) in the wait queue.
    UnknownWait(u64),
    UnknownBackend(String),
}

impl CoreError {
    pub fn malformed(param: Option<&str>, message: impl Into<String>) -> Self {
        CoreError::MalformedRequest { param: param.map(str::to_owned), message: message.into() }
    }
    pub fn config(message: impl Into<String>) -> Self {
        CoreError::InvalidConfig(message.into())
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::MalformedRequest { message, .. } => f.write_str(message),
            CoreError::InvalidConfig(m) => f.write_str(m),
            CoreError::UnknownTicket(t) => write!(f, "unknown ticket {t} (already released or never issued)"),
            CoreError::UnknownWait(w) => write!(f, "unknown wait id {w} (already resumed, cancelled or never issued)"),
            CoreError::UnknownBackend(b) => write!(f, "unknown backend {b:?}"),
        }
    }
}

impl std::error::Error for CoreError {}

pub type Result<T> = std::result::Result<T, CoreError>;
