//! Every [`CaError`] becomes a gRPC status here, once, for the admin and
//! node APIs alike: the code a client can act on, internal details logged
//! and not sent, messages bounded.

use tonic::Status;

use crate::ca::AgentRefused;
use crate::store::StoreError;
use crate::CaError;

/// Longest status message sent: what the CA says about an input never
/// grows with the input.
const MAX_STATUS_MESSAGE: usize = 1024;

/// `text` cut to about `max` bytes: its start and its end, with how long it
/// was in the middle (an echoed input is elided, what is said about it
/// stays).
pub(crate) fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let floor = |mut i: usize| {
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let head = floor(max * 3 / 4);
    let tail = floor(text.len() - max / 4);
    format!(
        "{}… ({} bytes) …{}",
        &text[..head],
        text.len(),
        &text[tail..]
    )
    .into()
}

/// Maps a CA error to the gRPC status a client can act on. Internal details
/// (database errors) are logged, not sent. Messages are bounded.
pub(crate) fn status(e: &CaError) -> Status {
    let s = unbounded_status(e);
    match bounded(s.message(), MAX_STATUS_MESSAGE) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(m) => Status::new(s.code(), m),
    }
}

fn unbounded_status(e: &CaError) -> Status {
    match e {
        CaError::Entry(_) | CaError::InvalidArgument(_) | CaError::JoinToken(_) => {
            Status::invalid_argument(e.to_string())
        }
        CaError::Store(StoreError::NotFound(_))
        | CaError::Authority(crate::keys::authority::AuthorityError::Store(
            StoreError::NotFound(_),
        )) => Status::not_found(e.to_string()),
        CaError::Authority(crate::keys::authority::AuthorityError::Refused(_)) => {
            Status::failed_precondition(e.to_string())
        }
        CaError::AgentRefused(
            AgentRefused::BadCsr(_) | AgentRefused::BadEvidence { .. } | AgentRefused::OutOfStep(_),
        ) => Status::invalid_argument(e.to_string()),
        CaError::AgentRefused(AgentRefused::MethodDisabled(_)) => {
            Status::failed_precondition(e.to_string())
        }
        CaError::AgentRefused(_) => Status::permission_denied(e.to_string()),
        CaError::Store(StoreError::AlreadyExists(_)) => Status::already_exists(e.to_string()),
        CaError::Issue(i) => match i {
            crate::keys::issuance::IssueError::CaExpired
            | crate::keys::issuance::IssueError::Sign(_) => {
                tracing::error!(error = %e, "issuance failed");
                Status::unavailable(e.to_string())
            }
            _ => Status::invalid_argument(e.to_string()),
        },
        _ => {
            tracing::error!(error = %e, "admin request failed");
            Status::internal("internal error in the CA; see its log")
        }
    }
}
