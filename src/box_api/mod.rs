//! The Box client: wire types, one method per Box endpoint, retries and token providers.
//!
//! Nothing here knows about multipart or the HTTP server: it takes bytes and answers typed values.
mod auth;
mod client;
mod error;
mod grants;
mod pacer;
mod retry;
mod types;

#[cfg(test)]
mod hostile_answers;

pub use crate::secret::{Secret, SecretSource};
pub use auth::{DeveloperToken, MintedToken, NoCredentials, StaticToken, TokenProvider};
pub use client::{BoxClient, BoxUrls, CommitAnswer, NewUpload, Principal, Target};
pub use error::{BoxError, BoxErrorKind, MAX_RETRY_AFTER};
pub use grants::{Grant, JwtApp, Subject, SubjectType};
pub use pacer::{Admission, NoCapacity, PaceKey, Pacer, PacerSettings};
pub use retry::{Attempt, RetryPolicy};
pub use types::{
    BoxErrorBody, Conflict, FileObject, FileUpdate, FolderCreated, FolderError, MetadataField,
    MetadataOption, MetadataTemplate, SessionEndpoints, SharedLinkUpdate, UploadPart, UploadSession,
};
