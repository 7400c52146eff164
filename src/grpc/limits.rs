//! Admission control: a global bound on work in progress (excess is shed
//! with UNAVAILABLE at once, never queued) and, per carrier, a token-bucket
//! rate limit and a daily quota (RESOURCE_EXHAUSTED with RetryInfo). Streams
//! are charged per item.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::auth::Principal;
use crate::clock;

struct Bucket {
    tokens: f64,
    refilled: Instant,
    day: i64,
    used_today: u64,
}

pub struct Limits {
    in_flight: Arc<Semaphore>,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
}

/// How long shed callers are told to wait before retrying.
const SHED_RETRY: Duration = Duration::from_millis(200);

fn retry_status(code: Code, message: String, after: Duration) -> Status {
    Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(after)))
}

impl Limits {
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Admits `items` verifications for `p`, or says why not and when to
    /// retry. Hold the permit until the work is done.
    pub fn admit(
        &self,
        p: &Principal,
        items: u64,
        at: clock::Moment,
    ) -> Result<OwnedSemaphorePermit, Status> {
        let permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            retry_status(
                Code::Unavailable,
                "the gateway is overloaded; retry shortly".into(),
                SHED_RETRY,
            )
        })?;
        if items == 0 {
            return Ok(permit);
        }
        if items > p.burst {
            return Err(Status::invalid_argument(format!(
                "{items} items exceed this carrier's burst limit of {}",
                p.burst
            )));
        }
        let now = at.instant;
        let today = at.today_vn().to_unix_days();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.entry(p.carrier_id.clone()).or_insert(Bucket {
            tokens: p.burst as f64,
            refilled: now,
            day: today,
            used_today: 0,
        });
        if b.day != today {
            b.day = today;
            b.used_today = 0;
        }
        if b.used_today + items > p.daily_quota {
            return Err(retry_status(
                Code::ResourceExhausted,
                format!("daily quota of {} verifications is used up", p.daily_quota),
                at.until_midnight_vn(),
            ));
        }
        let elapsed = now.duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * p.rate_per_sec).min(p.burst as f64);
        b.refilled = now;
        let need = items as f64;
        if b.tokens < need {
            let wait = Duration::from_secs_f64((need - b.tokens) / p.rate_per_sec);
            return Err(retry_status(
                Code::ResourceExhausted,
                format!(
                    "rate limit of {} verifications per second exceeded",
                    p.rate_per_sec
                ),
                wait.max(Duration::from_millis(1)),
            ));
        }
        b.tokens -= need;
        b.used_today += items;
        Ok(permit)
    }
}
