//! The one place where errors become gRPC statuses.
//!
//! Invalid input → INVALID_ARGUMENT with a `google.rpc.BadRequest` naming each
//! bad field. Anything internal → INTERNAL with a correlation id; the cause is
//! logged under that id and never returned (no SQL, paths or stack traces).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::domain::Violation;
use crate::verifier::VerifyError;

pub fn invalid_argument(violations: &[Violation]) -> Status {
    let message = violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let details = ErrorDetails::with_bad_request(
        violations
            .iter()
            .map(|v| FieldViolation {
                field: v.field.as_str().to_owned(),
                description: v.description.clone(),
                reason: v.code.to_owned(),
                localized_message: None,
            })
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

pub fn internal(cause: &dyn std::fmt::Display) -> Status {
    let correlation_id = uuid::Uuid::now_v7().to_string();
    tracing::error!(%correlation_id, error = %cause, "internal error");
    let details = ErrorDetails::with_request_info(correlation_id.clone(), "");
    Status::with_error_details(
        Code::Internal,
        format!("internal error (correlation id {correlation_id})"),
        details,
    )
}

impl From<VerifyError> for Status {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Invalid(v) => invalid_argument(&v),
            VerifyError::Store(e) => internal(&e),
            VerifyError::Audit(e) => internal(&e),
            VerifyError::DeadlineExceeded => {
                Status::deadline_exceeded("the deadline passed before the answer was ready")
            }
        }
    }
}
