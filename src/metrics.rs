//! Every metric of the gateway, its name and its help text, in one catalog.
//!
//! Built once at start into a registry that is passed in (no global statics), so each test gets its
//! own registry and can assert on it. Labels never carry file names, ids or secrets.
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub struct GatewayMetrics {
    /// Uploads that ended, plain and tus alike (`routes/outcome.rs`), by `method` (direct|chunked;
    /// unknown when refused before Box accepted the destination), `outcome` (success|client_error|
    /// conflict|rate_limited|gateway_busy|box_error|internal_error|cancelled|expired) and `key` (the
    /// API key's name, `passthrough` or `anonymous`; never the key itself). A tus upload counts once,
    /// when it lands, fails for good, is terminated (cancelled) or expires; a request refused before
    /// its upload exists counts as one that ended with that refusal.
    pub uploads: IntCounterVec,
    /// File bytes received from clients, by `method` and `key`.
    pub upload_bytes: IntCounterVec,
    /// From an upload's first request to its answer (tus: from creation to landing), of those that
    /// landed, by method.
    pub upload_duration: HistogramVec,
    /// Chunked-upload parts, by `outcome` (uploaded|failed).
    pub parts: IntCounterVec,
    pub part_duration: Histogram,
    /// Retries of Box calls, by `endpoint` and `reason` (rate_limited|server_error|timeout|connection|
    /// name_reserved|operation_blocked|commit_pending|parts_mismatch|token_expired).
    pub box_retries: IntCounterVec,
    /// Box calls, by `endpoint` and `status` (HTTP status, or timeout|connection).
    pub box_calls: IntCounterVec,
    pub box_call_duration: HistogramVec,
    /// Upload requests being answered now: plain uploads, tus creations and PATCHes.
    pub uploads_in_flight: IntGauge,
    /// Bytes of file content held in memory, against `memory_budget_bytes`.
    pub buffered_bytes: IntGauge,
    /// The most bytes ever held at once since start: never above the budget.
    pub buffered_bytes_peak: IntGauge,
    /// Bytes of file content held in memory now, by `key` (a key's name, with its links' bytes;
    /// passthrough; anonymous): each key's are within its share of the budget.
    pub buffered_bytes_by_key: IntGaugeVec,
    pub memory_budget_bytes: IntGauge,
    /// Bytes of spool files on disk (bodies of unknown size, tus chunks with a checksum), against
    /// `spool_max_total_bytes`.
    pub spool_bytes: IntGauge,
    /// Sessions aborted, by `reason`.
    pub sessions_aborted: IntCounterVec,
    /// Commits and direct uploads whose answer was lost (transport error, timeout, 5xx) and Box was
    /// asked what it holds, by `endpoint` and `outcome` (landed: the file is there, answered as
    /// success | not_landed | unknown: the lookup itself failed).
    pub lost_answers: IntCounterVec,
    /// Requests to Box's token endpoint, by `outcome` (issued|refused|failed|shared_failure).
    pub box_token_requests: IntCounterVec,
    /// Uploads refused by the gateway's access rules, by `key` (`none` when no valid key came) and
    /// `code` (unauthenticated|forbidden_folder|file_too_large).
    pub access_refused: IntCounterVec,
    /// Resumable (tus) uploads, by `event` (created|completed|failed|terminated|expired|rewound|
    /// scan_deferred: its landing met no scanner verdict and waits, kept whole) and `key`.
    pub tus_uploads: IntCounterVec,
    /// `Idempotency-Key` requests, by `outcome` (first|replayed|in_progress|mismatch|claim_lost).
    pub idempotent_requests: IntCounterVec,
    /// tus requests refused by the state's bounds or fencing, by `reason`
    /// (storage_full|too_many_pending_bytes|too_many_open_uploads|lock_lost).
    pub tus_refused: IntCounterVec,
    /// The bytes of every tus upload's unfinished part in the state store (shared by the replicas
    /// with Redis), as the sweeper last read it.
    pub tus_pending_bytes: IntGauge,
    /// Files (or versions) Box stored with other bytes than were sent, and their removal, by `what`
    /// (file|version) and `outcome` (deleted|failed).
    pub integrity_cleanups: IntCounterVec,
    /// 1 while the last background check reached Box (any answer below 500), 0 while it did not.
    /// Readiness does not follow it (a Box outage would empty the Service): an alert does.
    pub box_reachable: IntGauge,
    /// Completion events handed to the outbox, by `type` (upload.completed|upload.failed) and
    /// `outcome` (stored|not_stored: the state store failed and the event is lost).
    pub webhook_events: IntCounterVec,
    /// Webhook deliveries the receiver accepted (2xx).
    pub webhook_delivered: prometheus::IntCounter,
    /// Attempts that will be retried, by `reason` (status_<code>|timeout|connection|secret).
    pub webhook_retried: IntCounterVec,
    /// Events given up, by `reason` (expired: not delivered within webhook_max_age_secs | gone:
    /// the receiver answered 410 | no_receiver: its key is gone or names no URL any more |
    /// unreadable).
    pub webhook_dead: IntCounterVec,
    /// Events not stored because the outbox was full, by `key` (the caller's key name,
    /// `passthrough` or `anonymous`) and `cap` (key: webhook_outbox_max_events_per_key | total:
    /// webhook_outbox_max_events).
    pub webhook_outbox_refused: IntCounterVec,
    /// Times a receiver was paused after failing webhook_receiver_pause_after_failures attempts in
    /// a row, by `receiver` (`global`, or the key's name).
    pub webhook_receiver_paused: IntCounterVec,
    /// Events in the outbox (all replicas with Redis), as last read by the delivery worker.
    pub webhook_outbox_depth: IntGauge,
    /// Age in seconds of the oldest event in the outbox (0 when empty).
    pub webhook_outbox_oldest_age: IntGauge,
    /// Upload links made (`POST /v1/upload-links`), by `key`.
    pub upload_links: IntCounterVec,
    /// Upload links revoked (`DELETE /v1/upload-links/{id}`), by `key`.
    pub upload_links_revoked: IntCounterVec,
    /// Bytes of tus PATCH bodies received from clients (a chunk sent again counts again), by `key`:
    /// against what landed, it shows how much resuming saved.
    pub tus_received_bytes: IntCounterVec,
    /// Time waited for Box capacity (the pacer), by `kind` (admission: a new upload, bounded by
    /// `box_rate_wait_secs` | call: a call of an upload under way, or a check).
    pub box_rate_wait: HistogramVec,
    /// 429s Box answered, by `endpoint`.
    pub box_rate_limited: IntCounterVec,
    /// Box calls sent, by `principal` (12 hex digits of a SHA-256 of whom Box counts them against;
    /// `passthrough` for all callers' own tokens together, so the series stay few).
    pub box_calls_by_principal: IntCounterVec,
    /// New uploads refused with 503 `box_rate_limited` (no Box capacity within the wait), by `key`.
    pub box_rate_refused: IntCounterVec,
    /// Calls of uploads under way failed at once by the pacer (503 `box_rate_limited`): no room for
    /// them before their deadline, e.g. a pause past it, by `endpoint`.
    pub box_rate_calls_refused: IntCounterVec,
    /// Cleanup calls (aborts, deletes) sent without room in the pacer's budget (a pause, a spent
    /// budget) rather than held back, by `endpoint`.
    pub box_rate_cleanups_unpaced: IntCounterVec,
    /// Uploads refused with 429 `rate_limited` by their key's own quota, by `key` and `quota`
    /// (uploads_per_minute|bytes_per_day).
    pub key_quota_refused: IntCounterVec,
    /// What admissions took and gave back because their upload was refused (or its client left)
    /// before it reached Box, by `what` (uploads_per_minute|bytes_per_day|box_admission|open_upload|
    /// link_slot): a refusal costs the key, its link and its Box user nothing.
    pub admission_given_back: IntCounterVec,
    /// Folders the gateway created in Box for uploads by path.
    pub folders_created: prometheus::IntCounter,
    /// Path resolutions, by `result` (hit: the whole path was cached | miss: Box was asked | stale: a
    /// cached folder was gone and the path was resolved again).
    pub path_cache: IntCounterVec,
    /// Metadata template schemas needed to check an upload's metadata, by `result` (hit|miss).
    pub schema_cache: IntCounterVec,
    /// Uploads whose fields (description, tags, shared link, metadata) could not be applied after the
    /// commit, by `what` was removed (file|version) and `outcome` of the removal (deleted|failed).
    pub fields_cleanups: IntCounterVec,
    /// Scans of uploads by clamd (`scan/`), by `verdict` (clean|infected|error|too_large). Only
    /// `clean` lets an upload land.
    pub scans: IntCounterVec,
    /// Seconds from an upload's last byte written to clamd to clamd's verdict (clean or infected):
    /// what a commit waits for its scan. clamd scans a stream only once it has it whole, so this
    /// grows with the file's size.
    pub scan_latency: Histogram,
    /// Scans that ended without a verdict, by `kind` (connect|busy|connection_lost|timeout|protocol|
    /// size_limit|clamd_timeout|clamd_error|internal): `scan::ErrorKind`.
    pub scan_errors: IntCounterVec,
    /// Bytes written to clamd.
    pub scan_bytes: IntCounter,
    /// Connections to clamd carrying a scan now, against `gateway_scanner_connections_max`.
    pub scanner_connections_in_use: IntGauge,
    /// The scanner's pool size (0 while scanning is off).
    pub scanner_connections_max: IntGauge,
    /// 1 while clamd answered the last connection, PING or scan, 0 while it did not.
    pub scanner_up: IntGauge,
}

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let upload_buckets = exponential_buckets(0.01, 2.5, 14)?; // 10 ms .. ~6 h
        let call_buckets = exponential_buckets(0.005, 2.5, 12)?; // 5 ms .. ~20 min
        let m = Self {
            uploads: IntCounterVec::new(
                Opts::new(
                    "gateway_uploads_total",
                    "Uploads that ended (plain and tus; a tus upload once), by method, outcome and API key name.",
                ),
                &["method", "outcome", "key"],
            )?,
            upload_bytes: IntCounterVec::new(
                Opts::new(
                    "gateway_upload_bytes_total",
                    "File bytes received from clients, by method and API key name.",
                ),
                &["method", "key"],
            )?,
            upload_duration: HistogramVec::new(
                HistogramOpts::new(
                    "gateway_upload_duration_seconds",
                    "Time from an upload's first request to its answer (tus: from creation to landing), of uploads that landed, by method.",
                )
                .buckets(upload_buckets),
                &["method"],
            )?,
            parts: IntCounterVec::new(
                Opts::new("gateway_parts_total", "Chunked-upload parts, by outcome."),
                &["outcome"],
            )?,
            part_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "gateway_part_duration_seconds",
                    "Time to upload one part, retries included.",
                )
                .buckets(call_buckets.clone()),
            )?,
            box_retries: IntCounterVec::new(
                Opts::new(
                    "gateway_box_retries_total",
                    "Retried Box calls, by endpoint and reason.",
                ),
                &["endpoint", "reason"],
            )?,
            box_calls: IntCounterVec::new(
                Opts::new(
                    "gateway_box_calls_total",
                    "Box calls, by endpoint and HTTP status (or timeout|connection).",
                ),
                &["endpoint", "status"],
            )?,
            box_call_duration: HistogramVec::new(
                HistogramOpts::new(
                    "gateway_box_call_duration_seconds",
                    "Duration of one Box call, by endpoint.",
                )
                .buckets(call_buckets),
                &["endpoint"],
            )?,
            uploads_in_flight: IntGauge::new(
                "gateway_uploads_in_flight",
                "Upload requests being answered now (plain uploads, tus creations and PATCHes).",
            )?,
            buffered_bytes: IntGauge::new(
                "gateway_buffered_bytes",
                "File bytes held in memory now, taken from the memory budget.",
            )?,
            buffered_bytes_peak: IntGauge::new(
                "gateway_buffered_bytes_peak",
                "The most file bytes ever held in memory at once since start.",
            )?,
            buffered_bytes_by_key: IntGaugeVec::new(
                Opts::new(
                    "gateway_buffered_bytes_by_key",
                    "File bytes held in memory now, by the key whose uploads hold them (its links' included; passthrough; anonymous).",
                ),
                &["key"],
            )?,
            memory_budget_bytes: IntGauge::new(
                "gateway_memory_budget_bytes",
                "The configured memory budget.",
            )?,
            spool_bytes: IntGauge::new(
                "gateway_spool_bytes",
                "Bytes reserved in spool files now, against spool_max_total_bytes.",
            )?,
            sessions_aborted: IntCounterVec::new(
                Opts::new(
                    "gateway_sessions_aborted_total",
                    "Box upload sessions aborted, by reason.",
                ),
                &["reason"],
            )?,
            lost_answers: IntCounterVec::new(
                Opts::new(
                    "gateway_box_lost_answers_total",
                    "Commits and direct uploads whose answer was lost, by endpoint and what Box held (landed|not_landed|unknown).",
                ),
                &["endpoint", "outcome"],
            )?,
            box_token_requests: IntCounterVec::new(
                Opts::new(
                    "gateway_box_token_requests_total",
                    "Requests to Box's token endpoint, by outcome (issued|refused|failed|shared_failure: a failed refresh answered to a caller that waited for it).",
                ),
                &["outcome"],
            )?,
            access_refused: IntCounterVec::new(
                Opts::new(
                    "gateway_access_refused_total",
                    "Uploads refused by the gateway's access rules, by API key name and error code.",
                ),
                &["key", "code"],
            )?,
            tus_uploads: IntCounterVec::new(
                Opts::new(
                    "gateway_tus_uploads_total",
                    "Resumable (tus) uploads, by event (created|completed|failed|terminated|expired|rewound|scan_deferred) and API key name.",
                ),
                &["event", "key"],
            )?,
            idempotent_requests: IntCounterVec::new(
                Opts::new(
                    "gateway_idempotent_requests_total",
                    "Plain uploads sent with an Idempotency-Key, by outcome (first|replayed|in_progress|mismatch|claim_lost).",
                ),
                &["outcome"],
            )?,
            tus_refused: IntCounterVec::new(
                Opts::new(
                    "gateway_tus_refused_total",
                    "tus requests refused by the state store's bounds or fencing, by reason (storage_full|too_many_pending_bytes|too_many_open_uploads|lock_lost).",
                ),
                &["reason"],
            )?,
            tus_pending_bytes: IntGauge::new(
                "gateway_tus_pending_bytes",
                "Bytes of unfinished tus parts in the state store (all replicas with Redis), as last read by the sweeper.",
            )?,
            integrity_cleanups: IntCounterVec::new(
                Opts::new(
                    "gateway_box_integrity_cleanups_total",
                    "Files or versions Box stored with other bytes than were sent, by what (file|version) and outcome of their deletion (deleted|failed).",
                ),
                &["what", "outcome"],
            )?,
            box_reachable: IntGauge::new(
                "gateway_box_reachable",
                "1 when the last background check reached Box, 0 when it did not (timeout, connection, 5xx).",
            )?,
            webhook_events: IntCounterVec::new(
                Opts::new(
                    "gateway_webhook_events_total",
                    "Completion events handed to the outbox, by type (upload.completed|upload.failed) and outcome (stored|not_stored).",
                ),
                &["type", "outcome"],
            )?,
            webhook_delivered: prometheus::IntCounter::new(
                "gateway_webhook_delivered_total",
                "Webhook deliveries the receiver accepted with a 2xx.",
            )?,
            webhook_retried: IntCounterVec::new(
                Opts::new(
                    "gateway_webhook_retried_total",
                    "Webhook attempts to be retried, by reason (status_<code>|timeout|connection|secret).",
                ),
                &["reason"],
            )?,
            webhook_dead: IntCounterVec::new(
                Opts::new(
                    "gateway_webhook_dead_total",
                    "Webhook events given up, by reason (expired: past webhook_max_age_secs|gone: the receiver answered 410|no_receiver: its key is gone or names no webhook_url|unreadable).",
                ),
                &["reason"],
            )?,
            webhook_outbox_refused: IntCounterVec::new(
                Opts::new(
                    "gateway_webhook_outbox_refused_total",
                    "Completion events not stored because the outbox was full, by API key name and cap (key: webhook_outbox_max_events_per_key|total: webhook_outbox_max_events).",
                ),
                &["key", "cap"],
            )?,
            webhook_receiver_paused: IntCounterVec::new(
                Opts::new(
                    "gateway_webhook_receiver_paused_total",
                    "Webhook receivers paused after failing webhook_receiver_pause_after_failures attempts in a row, by receiver (global, or the API key name).",
                ),
                &["receiver"],
            )?,
            webhook_outbox_depth: IntGauge::new(
                "gateway_webhook_outbox_depth",
                "Events waiting in the webhook outbox (all replicas with Redis).",
            )?,
            webhook_outbox_oldest_age: IntGauge::new(
                "gateway_webhook_outbox_oldest_age_seconds",
                "Age in seconds of the oldest event in the webhook outbox (0 when empty).",
            )?,
            upload_links: IntCounterVec::new(
                Opts::new(
                    "gateway_upload_links_total",
                    "Upload links made (POST /v1/upload-links), by API key name.",
                ),
                &["key"],
            )?,
            upload_links_revoked: IntCounterVec::new(
                Opts::new(
                    "gateway_upload_links_revoked_total",
                    "Upload links revoked (DELETE /v1/upload-links/{id}), by API key name.",
                ),
                &["key"],
            )?,
            tus_received_bytes: IntCounterVec::new(
                Opts::new(
                    "gateway_tus_received_bytes_total",
                    "Bytes of tus PATCH bodies received from clients (bytes sent again count again), by API key name.",
                ),
                &["key"],
            )?,
            box_rate_wait: HistogramVec::new(
                HistogramOpts::new(
                    "gateway_box_rate_wait_seconds",
                    "Time waited for Box capacity under the rate limits, by kind (admission: a new upload | call: a call of an upload under way or a check).",
                )
                .buckets(exponential_buckets(0.001, 3.0, 12)?), // 1 ms .. ~3 min
                &["kind"],
            )?,
            box_rate_limited: IntCounterVec::new(
                Opts::new(
                    "gateway_box_rate_limited_total",
                    "429 answers from Box, by endpoint.",
                ),
                &["endpoint"],
            )?,
            box_calls_by_principal: IntCounterVec::new(
                Opts::new(
                    "gateway_box_calls_by_principal_total",
                    "Box calls sent, by principal (a short SHA-256 of the user Box counts them against).",
                ),
                &["principal"],
            )?,
            box_rate_refused: IntCounterVec::new(
                Opts::new(
                    "gateway_box_rate_refused_total",
                    "New uploads refused with 503 box_rate_limited (no Box capacity within box_rate_wait_secs), by API key name.",
                ),
                &["key"],
            )?,
            box_rate_calls_refused: IntCounterVec::new(
                Opts::new(
                    "gateway_box_rate_calls_refused_total",
                    "Calls of uploads under way failed at once with 503 box_rate_limited: the pacer had no room for them before their deadline (box_call_deadline_secs), by endpoint.",
                ),
                &["endpoint"],
            )?,
            box_rate_cleanups_unpaced: IntCounterVec::new(
                Opts::new(
                    "gateway_box_rate_cleanups_unpaced_total",
                    "Cleanup calls (session aborts, deletes) sent to Box without room in the pacer's budget (a pause, a spent budget) rather than held back, by endpoint.",
                ),
                &["endpoint"],
            )?,
            key_quota_refused: IntCounterVec::new(
                Opts::new(
                    "gateway_key_quota_refused_total",
                    "Uploads refused with 429 rate_limited by their API key's quota, by key name and quota (uploads_per_minute|bytes_per_day).",
                ),
                &["key", "quota"],
            )?,
            admission_given_back: IntCounterVec::new(
                Opts::new(
                    "gateway_admission_given_back_total",
                    "What admissions took and gave back because their upload never reached Box, by what (uploads_per_minute|bytes_per_day|box_admission|open_upload|link_slot).",
                ),
                &["what"],
            )?,
            folders_created: prometheus::IntCounter::new(
                "gateway_box_folders_created_total",
                "Folders the gateway created in Box for uploads by path.",
            )?,
            path_cache: IntCounterVec::new(
                Opts::new(
                    "gateway_path_resolutions_total",
                    "Folder paths resolved for uploads by path, by result (hit: all cached | miss: Box asked | stale: a cached folder was gone, resolved again).",
                ),
                &["result"],
            )?,
            schema_cache: IntCounterVec::new(
                Opts::new(
                    "gateway_metadata_schema_lookups_total",
                    "Metadata template schemas looked up to check an upload's metadata, by result (hit|miss).",
                ),
                &["result"],
            )?,
            fields_cleanups: IntCounterVec::new(
                Opts::new(
                    "gateway_fields_cleanups_total",
                    "Uploads whose fields could not be applied after the commit, by what was removed (file|version) and outcome of the removal (deleted|failed).",
                ),
                &["what", "outcome"],
            )?,
            scans: IntCounterVec::new(
                Opts::new(
                    "gateway_scans_total",
                    "Uploads scanned by clamd, by verdict (clean|infected|error|too_large).",
                ),
                &["verdict"],
            )?,
            scan_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "gateway_scan_latency_seconds",
                    "Time from an upload's last byte written to clamd to its verdict (clean or infected).",
                )
                .buckets(exponential_buckets(0.001, 3.0, 13)?), // 1 ms .. ~9 min
            )?,
            scan_errors: IntCounterVec::new(
                Opts::new(
                    "gateway_scan_errors_total",
                    "Scans that ended without a verdict, by kind (connect|busy|connection_lost|timeout|protocol|size_limit|clamd_timeout|clamd_error|internal).",
                ),
                &["kind"],
            )?,
            scan_bytes: IntCounter::new("gateway_scan_bytes_total", "Bytes written to clamd.")?,
            scanner_connections_in_use: IntGauge::new(
                "gateway_scanner_connections_in_use",
                "Connections to clamd carrying a scan now.",
            )?,
            scanner_connections_max: IntGauge::new(
                "gateway_scanner_connections_max",
                "The most connections to clamd at once (0: scanning is off).",
            )?,
            scanner_up: IntGauge::new(
                "gateway_scanner_up",
                "1 when clamd answered the last connection, PING or scan, 0 when it did not.",
            )?,
        };
        registry.register(Box::new(m.uploads.clone()))?;
        registry.register(Box::new(m.upload_bytes.clone()))?;
        registry.register(Box::new(m.upload_duration.clone()))?;
        registry.register(Box::new(m.parts.clone()))?;
        registry.register(Box::new(m.part_duration.clone()))?;
        registry.register(Box::new(m.box_retries.clone()))?;
        registry.register(Box::new(m.box_calls.clone()))?;
        registry.register(Box::new(m.box_call_duration.clone()))?;
        registry.register(Box::new(m.uploads_in_flight.clone()))?;
        registry.register(Box::new(m.buffered_bytes.clone()))?;
        registry.register(Box::new(m.buffered_bytes_peak.clone()))?;
        registry.register(Box::new(m.buffered_bytes_by_key.clone()))?;
        registry.register(Box::new(m.memory_budget_bytes.clone()))?;
        registry.register(Box::new(m.spool_bytes.clone()))?;
        registry.register(Box::new(m.sessions_aborted.clone()))?;
        registry.register(Box::new(m.lost_answers.clone()))?;
        registry.register(Box::new(m.box_token_requests.clone()))?;
        registry.register(Box::new(m.access_refused.clone()))?;
        registry.register(Box::new(m.tus_uploads.clone()))?;
        registry.register(Box::new(m.idempotent_requests.clone()))?;
        registry.register(Box::new(m.tus_refused.clone()))?;
        registry.register(Box::new(m.tus_pending_bytes.clone()))?;
        registry.register(Box::new(m.integrity_cleanups.clone()))?;
        registry.register(Box::new(m.box_reachable.clone()))?;
        registry.register(Box::new(m.webhook_events.clone()))?;
        registry.register(Box::new(m.webhook_delivered.clone()))?;
        registry.register(Box::new(m.webhook_retried.clone()))?;
        registry.register(Box::new(m.webhook_dead.clone()))?;
        registry.register(Box::new(m.webhook_outbox_refused.clone()))?;
        registry.register(Box::new(m.webhook_receiver_paused.clone()))?;
        registry.register(Box::new(m.webhook_outbox_depth.clone()))?;
        registry.register(Box::new(m.webhook_outbox_oldest_age.clone()))?;
        registry.register(Box::new(m.upload_links.clone()))?;
        registry.register(Box::new(m.upload_links_revoked.clone()))?;
        registry.register(Box::new(m.tus_received_bytes.clone()))?;
        registry.register(Box::new(m.box_rate_wait.clone()))?;
        registry.register(Box::new(m.box_rate_limited.clone()))?;
        registry.register(Box::new(m.box_calls_by_principal.clone()))?;
        registry.register(Box::new(m.box_rate_refused.clone()))?;
        registry.register(Box::new(m.box_rate_calls_refused.clone()))?;
        registry.register(Box::new(m.box_rate_cleanups_unpaced.clone()))?;
        registry.register(Box::new(m.key_quota_refused.clone()))?;
        registry.register(Box::new(m.admission_given_back.clone()))?;
        registry.register(Box::new(m.folders_created.clone()))?;
        registry.register(Box::new(m.path_cache.clone()))?;
        registry.register(Box::new(m.schema_cache.clone()))?;
        registry.register(Box::new(m.fields_cleanups.clone()))?;
        registry.register(Box::new(m.scans.clone()))?;
        registry.register(Box::new(m.scan_latency.clone()))?;
        registry.register(Box::new(m.scan_errors.clone()))?;
        registry.register(Box::new(m.scan_bytes.clone()))?;
        registry.register(Box::new(m.scanner_connections_in_use.clone()))?;
        registry.register(Box::new(m.scanner_connections_max.clone()))?;
        registry.register(Box::new(m.scanner_up.clone()))?;
        Ok(m)
    }
}
