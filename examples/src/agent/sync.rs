//! Keeping a datapath equal to the desired state: manifests read from a directory, translated
//! with kube-proxy's rules (`lb_k8s`), and the difference written, never a flush. At start the
//! services already in the (pinned) maps are adopted: their ids are kept, so established flows
//! keep their backends, and nothing is removed until the sources' first complete read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lb_api::abi::{ServiceKey, ServiceValue};
use lb_control::{Dataplane, DataplaneError, NodeSpec, ServiceSpec};
use lb_k8s::{frontend_key, FrontendKey, IdAllocator, Issue, ManifestError, Objects, Options};

use super::pinned::sock;

/// Why the manifests cannot be read (the previous state stays programmed).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory or a file cannot be read.
    #[error("reading {path} failed: check `sources.manifests`")]
    Read {
        /// The path.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest is malformed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Reads every `*.yaml` / `*.yml` file of `dir` (sorted by name) into objects, and a fingerprint
/// of their contents (to skip unchanged rounds).
///
/// # Errors
/// [`SourceError`] naming the file.
pub fn read_manifest_dir(dir: &Path) -> Result<(Objects, u64), SourceError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Read { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut objects = Objects::default();
    let mut hasher = std::hash::DefaultHasher::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(read_err(f))?;
        std::hash::Hash::hash(&(f, &text), &mut hasher);
        objects.add_yaml(&f.display().to_string(), &text)?;
    }
    Ok((objects, std::hash::Hasher::finish(&hasher)))
}

/// What one round wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Frontends written (new or changed).
    pub upserted: usize,
    /// Frontends removed.
    pub removed: usize,
    /// Frontends left as they were.
    pub unchanged: usize,
    /// Frontends the datapath refused, with the reason.
    pub failed: Vec<String>,
    /// The translation's issues (unsupported or invalid fields).
    pub issues: Vec<Issue>,
    /// Whether this node's identity was (re)written.
    pub node_written: bool,
}

/// The desired state last written, and the ids in use.
#[derive(Debug, Default)]
pub struct Reconciler {
    ids: IdAllocator,
    /// What this reconciler wrote, by frontend.
    applied: BTreeMap<FrontendKey, ServiceSpec>,
    /// Frontends found in the maps at start and not (yet) rewritten: removed at the first
    /// complete read if not desired.
    adopted: BTreeMap<FrontendKey, ServiceSpec>,
    node: Option<NodeSpec>,
}

impl Reconciler {
    /// Adopts the services a previous agent left in the maps: their ids are kept.
    #[must_use]
    pub fn adopt(existing: &[(ServiceKey, ServiceValue)]) -> Self {
        let mut r = Self::default();
        for (k, v) in existing {
            let frontend = sock(&k.addr, k.family, k.port);
            let Some(proto) = lb_api::flow::L4Proto::from_u8(k.proto) else {
                continue;
            };
            let key = frontend_key(frontend, proto);
            r.ids.seed(key, v.id);
            r.adopted.insert(
                key,
                ServiceSpec {
                    id: v.id,
                    frontend,
                    proto,
                    ..ServiceSpec::default()
                },
            );
        }
        r
    }

    /// Frontends currently programmed (written by this reconciler or adopted).
    #[must_use]
    pub fn frontends(&self) -> usize {
        self.applied.len() + self.adopted.len()
    }

    /// Makes `dp` equal to what `objects` translate to. `node_base` is the configured node,
    /// completed by the `Node` object (`complete` merges them). Frontends no longer desired
    /// are removed; adopted ones only when `prune` (the sources' first lists are complete).
    ///
    /// # Errors
    /// [`DataplaneError`] when the datapath itself fails (refused specs are in the report).
    pub fn sync(
        &mut self,
        dp: &mut dyn Dataplane,
        objects: &Objects,
        opts: &Options,
        complete: &dyn Fn(Option<&NodeSpec>) -> NodeSpec,
        prune: bool,
    ) -> Result<SyncReport, DataplaneError> {
        // Ids of frontends still programmed must not be handed out again: translate with every
        // adopted id still seeded (`translate` releases those it does not see, so re-seed).
        let mut ids = self.ids.clone();
        let t = lb_k8s::translate(
            &objects.services,
            &objects.slices,
            &objects.nodes,
            opts,
            &mut ids,
        );
        let mut report = SyncReport {
            issues: t.issues.clone(),
            ..SyncReport::default()
        };
        let node = complete(t.node.as_ref());
        let has_address = node.address_v4.is_some() || node.address_v6.is_some();
        if has_address && self.node.as_ref() != Some(&node) {
            dp.set_node(&node)?;
            self.node = Some(node);
            report.node_written = true;
        }
        let mut desired: BTreeMap<FrontendKey, ServiceSpec> = BTreeMap::new();
        for f in t.frontends {
            desired.insert(frontend_key(f.spec.frontend, f.spec.proto), f.spec);
        }
        for (key, spec) in &desired {
            if self.applied.get(key) == Some(spec) {
                report.unchanged += 1;
                continue;
            }
            match dp.upsert_service(spec) {
                Ok(()) => {
                    report.upserted += 1;
                    self.applied.insert(*key, spec.clone());
                    self.adopted.remove(key);
                }
                Err(DataplaneError::Config(e)) => {
                    report.failed.push(format!("{}: {e}", spec.frontend));
                }
                Err(e) => return Err(e),
            }
        }
        let gone: Vec<FrontendKey> = self
            .applied
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(spec) = self.applied.remove(&key) {
                dp.remove_service(&spec)?;
                report.removed += 1;
            }
        }
        if prune {
            let stale: Vec<FrontendKey> = self
                .adopted
                .keys()
                .filter(|k| !desired.contains_key(k))
                .copied()
                .collect();
            for key in stale {
                if let Some(spec) = self.adopted.remove(&key) {
                    dp.remove_service(&spec)?;
                    report.removed += 1;
                }
            }
        }
        // Keep the ids of everything still programmed.
        for (k, s) in self.applied.iter().chain(self.adopted.iter()) {
            ids.seed(*k, s.id);
        }
        self.ids = ids;
        Ok(report)
    }
}
