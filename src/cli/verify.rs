//! `simverify verify`: ask a running gateway about one subscriber.

use clap::{Args, ValueEnum};
use serde::Serialize;
use tonic_types::StatusExt;

use super::CliError;
use super::client::ClientArgs;
use crate::config::Config;
use crate::grpc::convert;
use crate::proto as pb;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SexArg {
    M,
    F,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PurposeArg {
    Activation,
    Reverification,
    Cleanup,
    OwnershipTransfer,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Subscriber phone number (0…, 84… or +84…).
    #[arg(long)]
    pub msisdn: String,
    /// 12-digit personal ID number.
    #[arg(long = "id")]
    pub id_number: String,
    /// Full name as the carrier holds it.
    #[arg(long = "name", default_value = "")]
    pub full_name: String,
    /// Date of birth, YYYY-MM-DD.
    #[arg(long = "dob", default_value = "")]
    pub date_of_birth: String,
    /// Claimed sex.
    #[arg(long)]
    pub sex: Option<SexArg>,
    /// Why the carrier verifies.
    #[arg(long, value_enum, default_value = "activation")]
    pub purpose: PurposeArg,
    /// Reference to the subscriber's consent record.
    #[arg(long)]
    pub consent_ref: Option<String>,
    /// Correlation key echoed back and recorded in the audit log
    /// (default: a fresh UUID).
    #[arg(long)]
    pub request_id: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Printed<'a> {
    request_id: &'a str,
    decision: &'static str,
    id_number: &'static str,
    full_name: &'static str,
    date_of_birth: &'static str,
    sex: &'static str,
    name_tier: &'static str,
    name_score: u32,
    recommended_action: &'static str,
    reasons: &'a [String],
    audit_id: &'a str,
    mirror_version: i64,
}

pub async fn run(cfg: &Config, args: VerifyArgs) -> Result<(), CliError> {
    let mut client =
        pb::verification_client::VerificationClient::new(args.client.connect(cfg).await?);
    let request = pb::VerifyRequest {
        request_id: args
            .request_id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        msisdn: args.msisdn,
        id_number: args.id_number,
        full_name: args.full_name,
        date_of_birth: args.date_of_birth,
        sex: match args.sex {
            None => pb::Sex::Unspecified,
            Some(SexArg::M) => pb::Sex::Male,
            Some(SexArg::F) => pb::Sex::Female,
        } as i32,
        purpose: match args.purpose {
            PurposeArg::Activation => pb::Purpose::Activation,
            PurposeArg::Reverification => pb::Purpose::Reverification,
            PurposeArg::Cleanup => pb::Purpose::Cleanup,
            PurposeArg::OwnershipTransfer => pb::Purpose::OwnershipTransfer,
        } as i32,
        consent_ref: args.consent_ref,
    };
    let r = match client.verify(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(status_error(&status)),
    };
    let p = Printed {
        request_id: &r.request_id,
        decision: convert::decision_name(r.decision),
        id_number: convert::field_name(r.id_number),
        full_name: convert::field_name(r.full_name),
        date_of_birth: convert::field_name(r.date_of_birth),
        sex: convert::field_name(r.sex),
        name_tier: convert::tier_name(r.name_tier),
        name_score: r.name_score,
        recommended_action: convert::action_name(r.recommended_action),
        reasons: &r.reasons,
        audit_id: &r.audit_id,
        mirror_version: r.mirror_version,
    };
    let text = if args.json {
        let mut json =
            serde_json::to_string_pretty(&p).map_err(|e| CliError::Internal(e.to_string()))?;
        json.push('\n');
        json
    } else {
        let reasons = if p.reasons.is_empty() {
            "-".to_owned()
        } else {
            p.reasons.join(", ")
        };
        format!(
            "{}  (recommended action: {})\n\
             \x20 id_number       {}\n\
             \x20 full_name       {}  (tier {}, score {})\n\
             \x20 date_of_birth   {}\n\
             \x20 sex             {}\n\
             \x20 reasons         {reasons}\n\
             \x20 request_id      {}\n\
             \x20 audit_id        {}\n\
             \x20 mirror_version  {}\n",
            p.decision,
            p.recommended_action,
            p.id_number,
            p.full_name,
            p.name_tier,
            p.name_score,
            p.date_of_birth,
            p.sex,
            p.request_id,
            p.audit_id,
            p.mirror_version
        )
    };
    super::print(&text)
}

/// A gRPC error as a one-line message, with each bad field on its own.
fn status_error(status: &tonic::Status) -> CliError {
    let details = status.get_error_details();
    match status.code() {
        tonic::Code::InvalidArgument => {
            let fields: Vec<String> = details
                .bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(|v| format!("{}: {} [{}]", v.field, v.description, v.reason))
                        .collect()
                })
                .unwrap_or_default();
            if fields.is_empty() {
                CliError::Data(format!("invalid request: {}", status.message()))
            } else {
                CliError::Data(format!("invalid request:\n  {}", fields.join("\n  ")))
            }
        }
        tonic::Code::Unavailable => {
            CliError::Unavailable(format!("gateway unavailable: {}", status.message()))
        }
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => CliError::Usage(format!(
            "refused ({:?}): {}",
            status.code(),
            status.message()
        )),
        code => CliError::Internal(format!("gateway error ({code:?}): {}", status.message())),
    }
}
