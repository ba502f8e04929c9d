//! The fault plan: a few rules, each picking requests of one endpoint and answering them badly.
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Set at start (`--faults`, `--delay-ms`, ...) or at run time (`PUT /_emulator/faults`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    #[serde(default)]
    pub rules: Vec<FaultRule>,
    /// Sleep this long before answering any request (control endpoints excepted).
    #[serde(default)]
    pub delay_ms: u64,
    /// Cap on how fast a request body is read, per request (one request at a time per HTTP/1.1
    /// connection, so per connection); TCP backpressure slows the client.
    #[serde(default)]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Every bearer token answers 401 `invalid_token` while set.
    #[serde(default)]
    pub expire_tokens: bool,
    /// Box's rate limit on calls, per token and `As-User`, over any 60 s: 429 `rate_limit_exceeded`
    /// with `Retry-After` past it (box-api.md). None: no limit.
    #[serde(default)]
    pub rate_calls_per_minute: Option<u32>,
    /// The same for upload calls (new sessions, direct uploads of files and versions).
    #[serde(default)]
    pub rate_uploads_per_minute: Option<u32>,
    /// The window both limits count over, in seconds (None: Box's 60). A test runs Box's counts in
    /// a shorter window, and a gateway paced to match, to show in seconds what takes Box minutes.
    #[serde(default)]
    pub rate_window_secs: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    CreateSession,
    UploadPart,
    Commit,
    Abort,
    DirectUpload,
    Preflight,
    Token,
    /// `POST /2.0/folders`.
    CreateFolder,
    /// `GET /2.0/metadata_templates/{scope}/{key}/schema`.
    GetMetadataTemplate,
    /// `POST /2.0/files/{id}/metadata/{scope}/{key}`.
    CreateMetadata,
    /// `PUT /2.0/files/{id}/metadata/{scope}/{key}` (JSON Patch).
    UpdateMetadata,
    /// `PUT /2.0/files/{id}` (description, tags, shared link, name).
    UpdateFile,
    /// `DELETE /2.0/files/{id}`.
    DeleteFile,
    /// `DELETE /2.0/files/{id}/versions/{version_id}`.
    DeleteFileVersion,
    /// Matches every request; counted over all endpoints.
    Any,
}

/// Which requests a rule hits: from the `nth` request of its endpoint on (1-based, counted since the
/// plan was set), each with probability `fraction` (seeded), at most `times` times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    pub endpoint: Endpoint,
    #[serde(default)]
    pub nth: Option<u64>,
    #[serde(default)]
    pub fraction: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Default: 1 without `fraction`, unlimited with it.
    #[serde(default)]
    pub times: Option<u64>,
    pub action: FaultAction,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultAction {
    /// Answer this status with Box's error body (`code` defaults from the status).
    Status {
        status: u16,
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// upload_part, commit, direct_upload, create_folder, create_metadata, update_file: do the work
    /// (store the part, commit the file, store the file, create the folder or instance, update the
    /// file), then answer 500 as if it had failed: the lost answer.
    StoreThenFail,
    /// The same endpoints as `store_then_fail`: do the work, then reset the connection instead of
    /// answering: the client sees a transport error although the work is done.
    StoreThenCut,
    /// commit: answer 202, empty body, `Retry-After`.
    CommitAccepted {
        #[serde(default = "one")]
        retry_after: u64,
    },
    /// commit: a transient 400 `parts_mismatch`.
    PartsMismatch,
    /// upload_part and direct_upload: reset the TCP connection after this many request-body bytes.
    CutConnection { after_bytes: u64 },
    /// Any endpoint: answer `status` (429 or 503, say) with this `Retry-After` header verbatim:
    /// huge (`100000000000000000000`), negative, `NaN`, an HTTP-date far ahead, garbage.
    RetryAfterRaw {
        #[serde(default = "too_many")]
        status: u16,
        value: String,
    },
    /// Any endpoint: answer `status` (default 200) with a body that is not what Box sends.
    GarbageBody {
        kind: Garbage,
        #[serde(default = "ok")]
        status: u16,
    },
    /// create_session: the session is made, but its answer's `total_parts` is one more than the
    /// file size and part size give.
    WrongTotalParts,
    /// commit and direct_upload: the file is stored, but with another SHA-1 than the bytes sent
    /// (Box stored other bytes), which the answer shows.
    CommitDiffers,
    /// commit: the session loses its part at this byte offset (as if Box had dropped a part it
    /// acknowledged), then the commit is checked as usual: `parts_mismatch` until it comes again.
    LosePart { offset: u64 },
}

/// What a `garbage_body` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Garbage {
    /// `text/plain`, not JSON at all.
    NotJson,
    /// JSON cut off in the middle.
    TruncatedJson,
    /// Valid JSON of the wrong shape (an array of numbers where an object is expected).
    WrongShape,
    /// An HTML page, as a proxy's error or login page.
    Html,
}

impl Garbage {
    pub fn body(self) -> (&'static str, &'static str) {
        match self {
            Garbage::NotJson => ("text/plain", "upstream connect error or disconnect/reset before headers"),
            Garbage::TruncatedJson => (
                "application/json",
                r#"{"type": "upload_session", "id": "F971964745A5CD0C001BBE4E58196BFD", "total_parts": 2, "part_si"#,
            ),
            Garbage::WrongShape => ("application/json", r#"[1, 2, {"entries": "none"}, null]"#),
            Garbage::Html => (
                "text/html; charset=utf-8",
                "<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>...</form></body></html>",
            ),
        }
    }
}

fn too_many() -> u16 {
    429
}

fn ok() -> u16 {
    200
}

fn one() -> u64 {
    1
}

impl FaultAction {
    pub fn name(&self) -> &'static str {
        match self {
            FaultAction::Status { .. } => "status",
            FaultAction::StoreThenFail => "store_then_fail",
            FaultAction::StoreThenCut => "store_then_cut",
            FaultAction::CommitAccepted { .. } => "commit_accepted",
            FaultAction::PartsMismatch => "parts_mismatch",
            FaultAction::CutConnection { .. } => "cut_connection",
            FaultAction::RetryAfterRaw { .. } => "retry_after_raw",
            FaultAction::GarbageBody { .. } => "garbage_body",
            FaultAction::WrongTotalParts => "wrong_total_parts",
            FaultAction::CommitDiffers => "commit_differs",
            FaultAction::LosePart { .. } => "lose_part",
        }
    }
}

/// One fault that fired, as the inspection shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FiredFault {
    pub endpoint: Endpoint,
    /// The request's 1-based number for its endpoint since the plan was set.
    pub request_number: u64,
    pub action: String,
    /// The answered status, for a `status` action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

struct RuleState {
    rule: FaultRule,
    fired: u64,
    rng: fastrand::Rng,
}

/// The plan plus its counters; lives behind a mutex in the emulator.
pub struct FaultEngine {
    plan: FaultPlan,
    rules: Vec<RuleState>,
    counts: HashMap<Endpoint, u64>,
}

impl FaultEngine {
    pub fn new(plan: FaultPlan) -> Self {
        let rules = plan
            .rules
            .iter()
            .map(|rule| RuleState {
                rule: rule.clone(),
                fired: 0,
                rng: fastrand::Rng::with_seed(rule.seed.unwrap_or(0)),
            })
            .collect();
        Self {
            plan,
            rules,
            counts: HashMap::new(),
        }
    }

    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Counts the request and returns the action of the first rule that fires on it.
    /// `None`: a request no rule names (file reads, list parts, ...); only `any` rules see it.
    pub fn pick(&mut self, endpoint: Option<Endpoint>) -> Option<FiredAction> {
        let own = endpoint.map(|e| bump(&mut self.counts, e));
        let any = bump(&mut self.counts, Endpoint::Any);
        for state in &mut self.rules {
            let number = match (state.rule.endpoint, own) {
                (Endpoint::Any, _) => any,
                (e, Some(n)) if Some(e) == endpoint => n,
                _ => continue,
            };
            if state.hits(number) {
                state.fired += 1;
                return Some(FiredAction {
                    action: state.rule.action.clone(),
                    fired: FiredFault {
                        endpoint: endpoint.unwrap_or(Endpoint::Any),
                        request_number: number,
                        action: state.rule.action.name().to_owned(),
                        status: match state.rule.action {
                            FaultAction::Status { status, .. }
                            | FaultAction::RetryAfterRaw { status, .. }
                            | FaultAction::GarbageBody { status, .. } => Some(status),
                            _ => None,
                        },
                    },
                });
            }
        }
        None
    }
}

pub struct FiredAction {
    pub action: FaultAction,
    pub fired: FiredFault,
}

fn bump(counts: &mut HashMap<Endpoint, u64>, endpoint: Endpoint) -> u64 {
    let n = counts.entry(endpoint).or_insert(0);
    *n += 1;
    *n
}

impl RuleState {
    fn hits(&mut self, number: u64) -> bool {
        let limit = self
            .rule
            .times
            .unwrap_or(if self.rule.fraction.is_some() { u64::MAX } else { 1 });
        if self.fired >= limit || number < self.rule.nth.unwrap_or(1) {
            return false;
        }
        match self.rule.fraction {
            Some(f) => self.rng.f64() < f,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(endpoint: Endpoint, nth: Option<u64>, times: Option<u64>) -> FaultRule {
        FaultRule {
            endpoint,
            nth,
            fraction: None,
            seed: None,
            times,
            action: FaultAction::PartsMismatch,
        }
    }

    #[test]
    fn nth_and_times_pick_a_window_of_requests() {
        let mut engine = FaultEngine::new(FaultPlan {
            rules: vec![rule(Endpoint::Commit, Some(2), Some(2))],
            ..FaultPlan::default()
        });
        let hits: Vec<bool> = (0..5)
            .map(|_| engine.pick(Some(Endpoint::Commit)).is_some())
            .collect();
        assert_eq!(hits, [false, true, true, false, false]);
    }

    #[test]
    fn other_endpoints_neither_match_nor_count() {
        let mut engine = FaultEngine::new(FaultPlan {
            rules: vec![rule(Endpoint::Commit, Some(2), None)],
            ..FaultPlan::default()
        });
        assert!(engine.pick(Some(Endpoint::UploadPart)).is_none());
        assert!(engine.pick(Some(Endpoint::Commit)).is_none());
        assert_eq!(
            engine.pick(Some(Endpoint::Commit)).unwrap().fired.request_number,
            2
        );
    }

    #[test]
    fn fraction_is_reproducible_with_a_seed() {
        let plan = FaultPlan {
            rules: vec![FaultRule {
                fraction: Some(0.5),
                seed: Some(7),
                ..rule(Endpoint::Any, None, None)
            }],
            ..FaultPlan::default()
        };
        let run = |plan: &FaultPlan| {
            let mut engine = FaultEngine::new(plan.clone());
            (0..64)
                .map(|_| engine.pick(Some(Endpoint::Token)).is_some())
                .collect::<Vec<_>>()
        };
        let first = run(&plan);
        assert_eq!(first, run(&plan));
        let fired = first.iter().filter(|h| **h).count();
        assert!((16..48).contains(&fired), "{fired}");
    }
}
