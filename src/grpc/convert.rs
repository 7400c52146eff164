//! Conversions between protobuf messages and domain values.

use super::wire::RequestText;
use crate::domain::{Decision, FieldResult, NameTier, Purpose, RawRequest, RecommendedAction, Sex};
use crate::proto as pb;
use crate::verifier::{Answer, Item};

pub fn sex_from_pb(v: i32) -> Option<Sex> {
    match pb::Sex::try_from(v) {
        Ok(pb::Sex::Male) => Some(Sex::Male),
        Ok(pb::Sex::Female) => Some(Sex::Female),
        _ => None,
    }
}

pub fn sex_to_pb(s: Option<Sex>) -> pb::Sex {
    match s {
        Some(Sex::Male) => pb::Sex::Male,
        Some(Sex::Female) => pb::Sex::Female,
        None => pb::Sex::Unspecified,
    }
}

pub fn purpose_from_pb(v: i32, default: Purpose) -> Purpose {
    match pb::Purpose::try_from(v) {
        Ok(pb::Purpose::Activation) => Purpose::Activation,
        Ok(pb::Purpose::Reverification) => Purpose::Reverification,
        Ok(pb::Purpose::Cleanup) => Purpose::Cleanup,
        Ok(pb::Purpose::OwnershipTransfer) => Purpose::OwnershipTransfer,
        _ => default,
    }
}

pub fn purpose_to_pb(p: Purpose) -> pb::Purpose {
    match p {
        Purpose::Activation => pb::Purpose::Activation,
        Purpose::Reverification => pb::Purpose::Reverification,
        Purpose::Cleanup => pb::Purpose::Cleanup,
        Purpose::OwnershipTransfer => pb::Purpose::OwnershipTransfer,
    }
}

pub fn item<'a>(r: &'a RequestText<'_>, default_purpose: Purpose) -> Item<'a> {
    Item {
        raw: RawRequest {
            request_id: &r.request_id,
            msisdn: &r.msisdn,
            id_number: &r.id_number,
            full_name: &r.full_name,
            date_of_birth: &r.date_of_birth,
            sex: sex_from_pb(r.sex),
            consent_ref: r.consent_ref.as_deref(),
        },
        purpose: purpose_from_pb(r.purpose, default_purpose),
    }
}

pub fn decision(d: Decision) -> pb::Decision {
    match d {
        Decision::Verified => pb::Decision::Verified,
        Decision::Mismatch => pb::Decision::Mismatch,
        Decision::NotFound => pb::Decision::NotFound,
        Decision::Deceased => pb::Decision::Deceased,
        Decision::Invalid => pb::Decision::Invalid,
    }
}

pub fn field(f: FieldResult) -> i32 {
    (match f {
        FieldResult::Match => pb::FieldResult::Match,
        FieldResult::Mismatch => pb::FieldResult::Mismatch,
        FieldResult::NotProvided => pb::FieldResult::NotProvided,
        FieldResult::NotAvailable => pb::FieldResult::NotAvailable,
    }) as i32
}

pub fn tier(t: Option<NameTier>) -> pb::NameTier {
    match t {
        None => pb::NameTier::Unspecified,
        Some(NameTier::Exact) => pb::NameTier::Exact,
        Some(NameTier::DiacriticsOnly) => pb::NameTier::DiacriticsOnly,
        Some(NameTier::TokenOverlap) => pb::NameTier::TokenOverlap,
        Some(NameTier::None) => pb::NameTier::None,
    }
}

pub fn action(a: RecommendedAction) -> pb::RecommendedAction {
    match a {
        RecommendedAction::None => pb::RecommendedAction::None,
        RecommendedAction::UpdateSubscriberRecord => pb::RecommendedAction::UpdateSubscriberRecord,
        RecommendedAction::SuspendOutgoing => pb::RecommendedAction::SuspendOutgoing,
        RecommendedAction::CorrectInput => pb::RecommendedAction::CorrectInput,
    }
}

pub fn response(a: Answer) -> pb::VerifyResponse {
    let v = a.verdict;
    pb::VerifyResponse {
        request_id: a.request_id,
        decision: decision(v.decision) as i32,
        id_number: field(v.id_number),
        full_name: field(v.full_name),
        date_of_birth: field(v.date_of_birth),
        sex: field(v.sex),
        name_tier: tier(v.name_tier) as i32,
        name_score: u32::from(v.name_score),
        recommended_action: action(v.action) as i32,
        reasons: v.reasons.iter().map(|r| r.as_str().to_owned()).collect(),
        audit_id: a.audit_id,
        mirror_version: a.mirror_version,
        violations: a
            .violations
            .into_iter()
            .map(|v| pb::FieldViolation {
                field: v.field.as_str().to_owned(),
                reason: v.code.to_owned(),
                description: v.description,
            })
            .collect(),
    }
}

/// Domain-side names of wire enums, for clients that print answers.
pub fn decision_name(v: i32) -> &'static str {
    match pb::Decision::try_from(v) {
        Ok(pb::Decision::Verified) => Decision::Verified.as_str(),
        Ok(pb::Decision::Mismatch) => Decision::Mismatch.as_str(),
        Ok(pb::Decision::NotFound) => Decision::NotFound.as_str(),
        Ok(pb::Decision::Deceased) => Decision::Deceased.as_str(),
        Ok(pb::Decision::Invalid) => Decision::Invalid.as_str(),
        _ => "UNSPECIFIED",
    }
}

pub fn field_name(v: i32) -> &'static str {
    match pb::FieldResult::try_from(v) {
        Ok(pb::FieldResult::Match) => FieldResult::Match.as_str(),
        Ok(pb::FieldResult::Mismatch) => FieldResult::Mismatch.as_str(),
        Ok(pb::FieldResult::NotProvided) => FieldResult::NotProvided.as_str(),
        Ok(pb::FieldResult::NotAvailable) => FieldResult::NotAvailable.as_str(),
        _ => "UNSPECIFIED",
    }
}

pub fn tier_name(v: i32) -> &'static str {
    match pb::NameTier::try_from(v) {
        Ok(pb::NameTier::Exact) => NameTier::Exact.as_str(),
        Ok(pb::NameTier::DiacriticsOnly) => NameTier::DiacriticsOnly.as_str(),
        Ok(pb::NameTier::TokenOverlap) => NameTier::TokenOverlap.as_str(),
        Ok(pb::NameTier::None) => NameTier::None.as_str(),
        _ => "UNSPECIFIED",
    }
}

pub fn action_name(v: i32) -> &'static str {
    match pb::RecommendedAction::try_from(v) {
        Ok(pb::RecommendedAction::None) => RecommendedAction::None.as_str(),
        Ok(pb::RecommendedAction::UpdateSubscriberRecord) => {
            RecommendedAction::UpdateSubscriberRecord.as_str()
        }
        Ok(pb::RecommendedAction::SuspendOutgoing) => RecommendedAction::SuspendOutgoing.as_str(),
        Ok(pb::RecommendedAction::CorrectInput) => RecommendedAction::CorrectInput.as_str(),
        _ => "UNSPECIFIED",
    }
}
