//! One upload's report, whatever its entry point (plain, tus, through a link): the in-flight gauge,
//! `gateway_uploads_total{method,outcome,key}`, `gateway_upload_bytes_total`,
//! `gateway_upload_duration_seconds`, the completion event and the log line, made the same way for all.
//!
//! - An upload that ends is counted once: a plain one when its request is answered (or its client
//!   leaves: `cancelled`); a tus one when it lands, fails for good, is terminated (`cancelled`) or
//!   expires (`expired`), not at each PATCH. A request refused before its upload exists is counted as
//!   an upload that ended with that refusal (method `unknown`), plain and tus alike, so the alerts'
//!   ratios see every entry point.
//! - Only a *started* upload writes a completion event: one whose Box destination was asked for, or
//!   whose file bytes began to come (a spooled body). A request refused before that (a bad
//!   parameter, a quota, the pacer, a link on a plain endpoint) writes none, so refusals cannot fill
//!   the outbox or a receiver.
//! - The event is in the outbox before the client is answered (see `events`).
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{HttpMessage, HttpRequest};

use super::middleware::RequestId;
use super::AppState;
use crate::access::{Caller, Owner};
use crate::box_api::Target;
use crate::error::ApiError;
use crate::events::{Completed, Event, Failed};
use crate::pipeline::{UploadMethod, UploadOutcome};

/// Where the upload came in.
pub enum Source {
    Plain,
    /// A tus upload: its id, and when it was created (Unix ms; None for records older than the field).
    Tus {
        id: String,
        created_ms: Option<u64>,
    },
}

/// One upload request's report; see the module's doc. Dropped without an end: a plain upload's
/// client left (`cancelled`), a tus upload goes on (its next PATCH, or the sweeper, ends it).
pub struct UploadReport<'a> {
    state: &'a AppState,
    key_label: Arc<str>,
    /// The caller's API key (a link's: the key that made it): its own webhook receiver, if any.
    key_name: Option<Arc<str>>,
    /// The upload link the caller came through: its events say so.
    link_id: Option<Arc<str>>,
    request_id: Option<String>,
    began: Instant,
    source: Source,
    /// Known once Box has accepted the destination.
    method: Cell<Option<UploadMethod>>,
    /// The destination's name and folder, once known (for the failure event).
    target: RefCell<(Option<String>, Option<String>)>,
    /// An upload by path: its folder path below the root (both events name it).
    path: RefCell<Option<String>>,
    /// File bytes received from the client (a tus upload: its offset).
    received: Rc<Cell<u64>>,
    /// A tus upload's `Upload-Metadata`, decoded, for its completion event.
    upload_metadata: RefCell<Option<HashMap<String, String>>>,
    started: Cell<bool>,
    ended: Cell<bool>,
}

impl<'a> UploadReport<'a> {
    /// Counts the request in flight, and names its key in the request's span.
    pub fn begin(state: &'a AppState, caller: &Caller, req: &HttpRequest, source: Source) -> Self {
        state.metrics.uploads_in_flight.inc();
        tracing::Span::current().record("key", &**caller.key_label());
        Self {
            state,
            key_label: caller.key_label().clone(),
            key_name: caller.owner().key_name().map(Arc::from),
            link_id: match caller.owner() {
                Owner::Link { link_id, .. } => Some(link_id.clone()),
                _ => None,
            },
            request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
            began: Instant::now(),
            source,
            method: Cell::default(),
            target: RefCell::default(),
            path: RefCell::default(),
            received: Rc::default(),
            upload_metadata: RefCell::default(),
            started: Cell::new(false),
            ended: Cell::new(false),
        }
    }

    pub fn set_target(&self, target: &Target) {
        *self.target.borrow_mut() = match target {
            Target::NewFile { folder_id, name } => (Some(name.clone()), Some(folder_id.clone())),
            Target::NewVersion { name, .. } => (name.clone(), None),
        };
    }

    /// An upload by path's folder, once its path led there.
    pub fn set_folder(&self, folder_id: &str) {
        self.target.borrow_mut().1 = Some(folder_id.to_owned());
    }

    /// An upload by path: its folder path below the root, for the events.
    pub fn set_path(&self, path: Option<String>) {
        *self.path.borrow_mut() = path;
    }

    /// A tus upload's `Upload-Metadata`, decoded (the completion event carries it).
    pub fn set_upload_metadata(&self, metadata: HashMap<String, String>) {
        *self.upload_metadata.borrow_mut() = Some(metadata);
    }

    /// Box accepted the destination with this method (and the upload is started).
    pub fn set_method(&self, method: UploadMethod) {
        self.method.set(Some(method));
        self.started.set(true);
    }

    /// The upload started: its Box destination is being asked for. From here on its end writes a
    /// completion event (as it does once file bytes were received: `received`).
    pub fn started(&self) {
        self.started.set(true);
    }

    /// The count of file bytes received, for the body to add to as they come (the first of them
    /// starts the upload).
    pub fn received(&self) -> Rc<Cell<u64>> {
        self.received.clone()
    }

    /// Time since the request began (the 201's `duration_ms`).
    pub fn elapsed(&self) -> std::time::Duration {
        self.began.elapsed()
    }

    /// The upload landed: counted, its event stored, logged.
    pub async fn landed(&self, outcome: &UploadOutcome) {
        self.ended.set(true);
        let file = &outcome.file.0;
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        let tus_id = match &self.source {
            Source::Plain => None,
            Source::Tus { id, .. } => Some(id.clone()),
        };
        let upload_metadata = self.upload_metadata.borrow().clone();
        let event = Event::Completed(Completed {
            file_id: outcome.file.id().unwrap_or_default().to_owned(),
            file_version_id: text(&file["file_version"]["id"]),
            name: text(&file["name"]),
            folder_id: text(&file["parent"]["id"]),
            path: self.path.borrow().clone(),
            size: outcome.size,
            sha1: outcome.sha1_hex.clone(),
            method: outcome.method.as_str().to_owned(),
            key: self.key_label.to_string(),
            link_id: self.link_id.as_deref().map(str::to_owned),
            request_id: self.request_id.clone(),
            tus_id: tus_id.clone(),
            upload_metadata,
            scan: Some(outcome.scan.clone()),
        });
        self.emit(event).await;
        let m = &self.state.metrics;
        let method = outcome.method.as_str();
        let duration = self.duration();
        m.uploads
            .with_label_values(&[method, "success", &self.key_label])
            .inc();
        m.upload_bytes
            .with_label_values(&[method, &self.key_label])
            .inc_by(outcome.size);
        m.upload_duration
            .with_label_values(&[method])
            .observe(duration.as_secs_f64());
        tracing::info!(method, file_id = outcome.file.id(), size = outcome.size, sha1 = %outcome.sha1_hex,
            session_id = outcome.session_id, tus_id, duration_ms = duration.as_millis() as u64,
            scanned = outcome.scan.scanned, "upload landed in Box");
    }

    /// The upload ended with `err`: counted; its event stored if it had started.
    pub async fn failed(&self, err: &ApiError) {
        self.ended.set(true);
        self.state
            .metrics
            .uploads
            .with_label_values(&[self.method_label(), err.outcome(), &self.key_label])
            .inc();
        if !self.started.get() && self.received.get() == 0 {
            return;
        }
        let (name, folder_id) = self.target.borrow().clone();
        let event = Event::Failed(Failed {
            code: err.code.to_owned(),
            message: err.message.clone(),
            name,
            folder_id,
            path: self.path.borrow().clone(),
            bytes_received: self.received.get(),
            key: self.key_label.to_string(),
            link_id: self.link_id.as_deref().map(str::to_owned),
            request_id: self.request_id.clone(),
            tus_id: match &self.source {
                Source::Plain => None,
                Source::Tus { id, .. } => Some(id.clone()),
            },
        });
        self.emit(event).await;
    }

    /// To the key's own receiver or the gateway's, counted against the caller's key label.
    async fn emit(&self, event: Event) {
        self.state
            .events
            .emit(&self.key_label, self.key_name.as_deref(), event)
            .await;
    }

    /// `unknown` when the upload ended before Box accepted its destination.
    fn method_label(&self) -> &'static str {
        self.method.get().map_or("unknown", UploadMethod::as_str)
    }

    fn duration(&self) -> std::time::Duration {
        match &self.source {
            Source::Tus {
                created_ms: Some(created),
                ..
            } => std::time::Duration::from_millis(crate::state::now_ms().saturating_sub(*created)),
            _ => self.began.elapsed(),
        }
    }
}

impl Drop for UploadReport<'_> {
    fn drop(&mut self) {
        self.state.metrics.uploads_in_flight.dec();
        if self.ended.get() || !matches!(self.source, Source::Plain) {
            return;
        }
        self.state
            .metrics
            .uploads
            .with_label_values(&[self.method_label(), "cancelled", &self.key_label])
            .inc();
        tracing::warn!(
            elapsed_ms = self.began.elapsed().as_millis() as u64,
            "client left before the upload finished"
        );
    }
}

/// A tus upload that ended without a request to report it (terminated by its client, expired): counted
/// once in `gateway_uploads_total`, as `outcome`.
pub fn count_tus_end(
    state: &AppState,
    resumable: &crate::pipeline::Resumable,
    outcome: &str,
    key_label: &str,
) {
    state
        .metrics
        .uploads
        .with_label_values(&[resumable.method().as_str(), outcome, key_label])
        .inc();
}
