//! Upload by path (issue 25): a folder path under a root folder resolved to a folder id, missing
//! levels created as `mkdir -p` does.
//!
//! Each missing level costs one Box call: create it; on 409 `item_name_in_use` the conflict names the
//! folder that is there (made earlier, or a moment ago by another upload on this replica or another),
//! and its id is taken. So twenty uploads into one new path, over any number of replicas, create each
//! folder once: Box's name check is the lock. A file in the way is `PathError::Conflict`.
//!
//! Resolved levels are cached per process and principal (a few minutes); a cached folder Box says
//! is gone (404) is forgotten and the path resolved once more from the root. In this process, one
//! resolution per path runs at a time (the others wait for it and find the cache filled).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::box_api::{BoxClient, BoxError, FolderCreated, FolderError, PaceKey};
use crate::metrics::GatewayMetrics;

use super::fields::make_room;

/// A folder path below a root folder: its segments, as the edge checked them (`routes/params.rs`:
/// percent-decoded, not empty, `.` or `..`, no `/`, `\` or control characters, ...). The resolver
/// never joins them into one string to look anything up, and Box refuses such names itself
/// (`item_name_invalid`): a segment only ever names a folder inside the one above it.
/// Stored (a staged upload's destination, `scanned.rs`) as its list of segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FolderPath {
    segments: Vec<String>,
}

impl FolderPath {
    pub fn new(segments: Vec<String>) -> Self {
        Self { segments }
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// `Finance/Invoices/2026-12`, for answers and logs.
    pub fn display(&self) -> String {
        self.segments.join("/")
    }

    /// The first `depth` segments, joined.
    fn prefix(&self, depth: usize) -> String {
        self.segments[..depth].join("/")
    }
}

/// Where a path led.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedFolder {
    pub folder_id: String,
    /// The folders this resolution created, from the top down.
    pub created: Vec<CreatedFolder>,
    /// Whether a level came from the cache (then a 404 from Box may mean it went stale).
    #[serde(skip)]
    pub cached: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedFolder {
    pub id: String,
    /// From the root, e.g. `Finance/Invoices`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A file (or web link) holds a segment's name where a folder should be (the routes answer 409
    /// `path_conflict`).
    #[error("{path:?}: {segment:?} is a {kind} (id {id}), not a folder")]
    Conflict {
        segment: String,
        /// From the root to that segment.
        path: String,
        id: String,
        kind: String,
    },
    /// A level is missing and folders are not to be created (`create_folders=false`; the routes
    /// answer 404 `folder_not_found`).
    #[error("the folder {path:?} does not exist")]
    NotFound { segment: String, path: String },
}

/// Settings of upload by path and of the fields that land with a file (`path_cache_ttl_secs`,
/// `path_cache_max_entries`, `metadata_schema_cache_ttl_secs`, `metadata_schema_cache_max_entries`).
#[derive(Debug, Clone)]
pub struct PathSettings {
    /// How long a resolved folder is trusted without asking Box. A folder renamed or moved in Box
    /// keeps receiving uploads by its old path for at most this long; a deleted one is noticed at
    /// once (404).
    pub path_cache_ttl: Duration,
    pub path_cache_max_entries: usize,
    /// How long a metadata template's schema is trusted: a field added to a template is accepted
    /// this much later at worst.
    pub schema_cache_ttl: Duration,
    pub schema_cache_max_entries: usize,
}

impl Default for PathSettings {
    fn default() -> Self {
        Self {
            path_cache_ttl: Duration::from_secs(180),
            path_cache_max_entries: 10_000,
            schema_cache_ttl: Duration::from_secs(300),
            schema_cache_max_entries: 1_000,
        }
    }
}

/// Whose folder, under which root, at which (lower-cased) path: Box compares names regardless of
/// case, and a path resolved for one principal says nothing about what another may see.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PathKey {
    who: PaceKey,
    root: String,
    segments: Vec<String>,
}

impl PathKey {
    fn new(who: &PaceKey, root: &str, segments: &[String]) -> Self {
        Self {
            who: who.clone(),
            root: root.to_owned(),
            segments: segments.iter().map(|s| s.to_lowercase()).collect(),
        }
    }
}

/// Resolved folders by path (every level of each path resolved), for `ttl`, at most `max_entries`.
pub(super) struct PathCache {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<PathKey, (Instant, String)>>,
}

impl PathCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathKey, (Instant, String)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deepest level of `segments` still cached: (its depth, its folder id).
    pub fn deepest(
        &self,
        who: &PaceKey,
        root: &str,
        segments: &[String],
        now: Instant,
    ) -> Option<(usize, String)> {
        let entries = self.lock();
        (1..=segments.len()).rev().find_map(|depth| {
            entries
                .get(&PathKey::new(who, root, &segments[..depth]))
                .filter(|(at, _)| now.duration_since(*at) < self.ttl)
                .map(|(_, id)| (depth, id.clone()))
        })
    }

    pub fn put(&self, who: &PaceKey, root: &str, segments: &[String], id: &str, now: Instant) {
        let mut entries = self.lock();
        make_room(&mut entries, self.max_entries, self.ttl, now);
        entries.insert(PathKey::new(who, root, segments), (now, id.to_owned()));
    }

    /// Forgets every level of `segments` and every path below it: when a cached folder on the way
    /// is gone, the levels above it may be gone too (a deleted parent takes its children along).
    /// Other paths below those levels stay; each finds out on its own 404.
    pub fn forget(&self, who: &PaceKey, root: &str, segments: &[String]) {
        let gone = PathKey::new(who, root, segments);
        self.lock().retain(|k, _| {
            let same = k.who == gone.who && k.root == gone.root;
            !(same && (gone.segments.starts_with(&k.segments) || k.segments.starts_with(&gone.segments)))
        });
    }
}

/// The path resolver of one process: its cache, and one resolution at a time per path.
pub(super) struct PathResolver {
    pub cache: PathCache,
    flights: Mutex<HashMap<PathKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl PathResolver {
    pub fn new(settings: &PathSettings) -> Self {
        Self {
            cache: PathCache::new(settings.path_cache_ttl, settings.path_cache_max_entries),
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves `path` under `root` as `client`'s principal. `create`: missing levels are created;
    /// otherwise a missing level is `NotFound`.
    pub async fn resolve(
        &self,
        client: &BoxClient,
        metrics: &GatewayMetrics,
        root: &str,
        path: &FolderPath,
        create: bool,
    ) -> Result<ResolvedFolder, ResolveError> {
        let w = Walk {
            client,
            metrics,
            who: client.principal(),
            root,
            path,
            create,
        };
        if path.is_empty() {
            return Ok(ResolvedFolder {
                folder_id: root.to_owned(),
                created: Vec::new(),
                cached: false,
            });
        }
        if let Some(hit) = self.full_hit(&w) {
            return Ok(hit);
        }
        let flight = self.flight(&w);
        let result = async {
            let _turn = flight.lock().await;
            // Whoever held the turn before may have resolved this very path.
            if let Some(hit) = self.full_hit(&w) {
                return Ok(hit);
            }
            metrics.path_cache.with_label_values(&["miss"]).inc();
            self.walk_fresh_on_stale(&w).await
        }
        .await;
        self.land(&w, flight);
        result
    }

    fn full_hit(&self, w: &Walk<'_>) -> Option<ResolvedFolder> {
        let segments = w.path.segments();
        match self.cache.deepest(w.who, w.root, segments, Instant::now()) {
            Some((depth, id)) if depth == segments.len() => {
                w.metrics.path_cache.with_label_values(&["hit"]).inc();
                Some(ResolvedFolder {
                    folder_id: id,
                    created: Vec::new(),
                    cached: true,
                })
            }
            _ => None,
        }
    }

    /// From the deepest cached level; if Box says that folder is gone, once more from the root.
    async fn walk_fresh_on_stale(&self, w: &Walk<'_>) -> Result<ResolvedFolder, ResolveError> {
        let segments = w.path.segments();
        let from_root = (0, w.root.to_owned());
        let Some((depth, id)) = self.cache.deepest(w.who, w.root, segments, Instant::now()) else {
            return self.walk(w, from_root).await;
        };
        match self.walk(w, (depth, id)).await {
            Err(ResolveError::Box(err)) if err.status() == Some(404) => {
                tracing::info!(path = %w.path.prefix(depth), "a cached folder is gone from Box; resolving the path again");
                w.metrics.path_cache.with_label_values(&["stale"]).inc();
                self.cache.forget(w.who, w.root, segments);
                self.walk(w, from_root).await
            }
            other => other.map(|r| ResolvedFolder { cached: true, ..r }),
        }
    }

    /// Level by level from `start` (depth, folder id): one Box call per level.
    async fn walk(&self, w: &Walk<'_>, start: (usize, String)) -> Result<ResolvedFolder, ResolveError> {
        let segments = w.path.segments();
        let (from, mut parent) = start;
        let mut created = Vec::new();
        for depth in from..segments.len() {
            let name = &segments[depth];
            let id = if w.create {
                match w.client.create_folder(&parent, name).await {
                    Ok(FolderCreated::Created { id }) => {
                        let path = w.path.prefix(depth + 1);
                        w.metrics.folders_created.inc();
                        tracing::info!(folder_id = %id, %path, "created a Box folder for an upload by path");
                        created.push(CreatedFolder { id: id.clone(), path });
                        id
                    }
                    Ok(FolderCreated::Existing { id }) => id,
                    Err(FolderError::ItemInTheWay { id, kind, .. }) => {
                        return Err(in_the_way(w.path, depth, id, kind))
                    }
                    Err(FolderError::Box(err)) => return Err(err.into()),
                }
            } else {
                match w.client.find_item(&parent, name).await? {
                    Some((kind, id)) if kind == "folder" => id,
                    Some((kind, id)) => return Err(in_the_way(w.path, depth, id, kind)),
                    None => {
                        return Err(PathError::NotFound {
                            segment: name.clone(),
                            path: w.path.prefix(depth + 1),
                        }
                        .into())
                    }
                }
            };
            self.cache
                .put(w.who, w.root, &segments[..=depth], &id, Instant::now());
            parent = id;
        }
        Ok(ResolvedFolder {
            folder_id: parent,
            created,
            cached: false,
        })
    }

    /// This process's turn for one path.
    fn flight(&self, w: &Walk<'_>) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        flights.entry(w.key()).or_default().clone()
    }

    /// Drops the path's turn when nobody else holds or waits for it.
    fn land(&self, w: &Walk<'_>, flight: Arc<tokio::sync::Mutex<()>>) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: the map's and `flight`.
        if Arc::strong_count(&flight) <= 2 {
            flights.remove(&w.key());
        }
    }

    /// Forgets a resolved path (and what is below it): an upload into it met a 404.
    pub fn forget(&self, who: &PaceKey, root: &str, path: &FolderPath) {
        self.cache.forget(who, root, path.segments());
    }
}

/// One resolution: who asks, from where, for what.
struct Walk<'a> {
    client: &'a BoxClient,
    metrics: &'a GatewayMetrics,
    who: &'a PaceKey,
    root: &'a str,
    path: &'a FolderPath,
    create: bool,
}

impl Walk<'_> {
    fn key(&self) -> PathKey {
        PathKey::new(self.who, self.root, self.path.segments())
    }
}

/// `PathError::Conflict` for the segment at `depth`.
fn in_the_way(path: &FolderPath, depth: usize, id: String, kind: String) -> ResolveError {
    PathError::Conflict {
        segment: path.segments[depth].clone(),
        path: path.prefix(depth + 1),
        id,
        kind,
    }
    .into()
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ResolveError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Box(#[from] BoxError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(path: &str) -> Vec<String> {
        path.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn the_deepest_live_level_is_found_regardless_of_case() {
        let cache = PathCache::new(Duration::from_secs(180), 100);
        let who = PaceKey::of("app", None);
        let t0 = Instant::now();
        cache.put(&who, "0", &segs("Finance"), "11", t0);
        cache.put(&who, "0", &segs("Finance/Invoices"), "12", t0);
        let path = segs("finance/INVOICES/2026-12");
        assert_eq!(cache.deepest(&who, "0", &path, t0), Some((2, "12".into())));
        assert_eq!(
            cache.deepest(&who, "0", &segs("Finance/Payroll"), t0),
            Some((1, "11".into()))
        );
        assert_eq!(cache.deepest(&who, "5", &path, t0), None, "another root");
        assert_eq!(
            cache.deepest(&PaceKey::of("app", Some("u")), "0", &path, t0),
            None,
            "another principal"
        );
        assert_eq!(
            cache.deepest(&who, "0", &path, t0 + Duration::from_secs(180)),
            None,
            "expired"
        );
    }

    #[test]
    fn forgetting_a_path_forgets_its_levels_and_what_is_below_it() {
        let cache = PathCache::new(Duration::from_secs(180), 100);
        let who = PaceKey::of("app", None);
        let t0 = Instant::now();
        for (p, id) in [("A", "1"), ("A/B", "2"), ("A/B/C", "3"), ("A/D", "4"), ("E", "5")] {
            cache.put(&who, "0", &segs(p), id, t0);
        }
        cache.forget(&who, "0", &segs("a/b"));
        assert_eq!(
            cache.deepest(&who, "0", &segs("A/B/C"), t0),
            None,
            "A, A/B and A/B/C forgotten"
        );
        assert_eq!(
            cache.deepest(&who, "0", &segs("A/D"), t0),
            Some((2, "4".into())),
            "a sibling stays"
        );
        assert_eq!(cache.deepest(&who, "0", &segs("E"), t0), Some((1, "5".into())));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = PathCache::new(Duration::from_secs(180), 3);
        let who = PaceKey::of("app", None);
        let t0 = Instant::now();
        for i in 0..10u64 {
            cache.put(
                &who,
                "0",
                &[format!("f{i}")],
                &i.to_string(),
                t0 + Duration::from_secs(i),
            );
        }
        let now = t0 + Duration::from_secs(10);
        let kept: Vec<u64> = (0..10)
            .filter(|i| cache.deepest(&who, "0", &[format!("f{i}")], now).is_some())
            .collect();
        assert_eq!(kept, [7, 8, 9]);
    }
}
