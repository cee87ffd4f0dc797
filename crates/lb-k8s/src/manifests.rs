//! Reading manifests: YAML documents (one object each, or a `kind: List` as `kubectl get -o
//! yaml` prints it) into the objects the translation reads.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

/// The objects of a set of manifests the translation reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    /// `v1/Service` objects.
    pub services: Vec<Service>,
    /// `discovery.k8s.io/v1/EndpointSlice` objects.
    pub slices: Vec<EndpointSlice>,
    /// `v1/Node` objects.
    pub nodes: Vec<Node>,
    /// Objects of other kinds (`apiVersion/kind`), passed over.
    pub other_kinds: Vec<String>,
}

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A document is not YAML, or not an object.
    #[error("document {index} of {origin} is not a Kubernetes object in YAML: fix its syntax")]
    Yaml {
        /// Where the text came from (a file name).
        origin: String,
        /// The document's position, from 0.
        index: usize,
        /// The parser's error (with line and column).
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// An object of a known kind whose fields do not match the kind's schema.
    #[error(
        "{kind} {name:?} in {origin} does not match the {kind} schema: fix the field the \
         cause names"
    )]
    Schema {
        /// Where the text came from.
        origin: String,
        /// The kind.
        kind: String,
        /// `metadata.name`, when readable.
        name: String,
        /// What does not match.
        #[source]
        source: serde_json::Error,
    },
}

impl Objects {
    /// Adds the objects of `text` (any number of YAML documents; `kind: List` expanded);
    /// `origin` names the text in errors.
    ///
    /// # Errors
    /// [`ManifestError`] naming the document or object; nothing of `text` is added then.
    pub fn add_yaml(&mut self, origin: &str, text: &str) -> Result<(), ManifestError> {
        let mut found = Objects::default();
        for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value =
                serde_json::Value::deserialize(doc).map_err(|source| ManifestError::Yaml {
                    origin: origin.into(),
                    index,
                    source,
                })?;
            found.add_value(origin, value)?;
        }
        self.services.append(&mut found.services);
        self.slices.append(&mut found.slices);
        self.nodes.append(&mut found.nodes);
        self.other_kinds.append(&mut found.other_kinds);
        Ok(())
    }

    fn add_value(&mut self, origin: &str, value: serde_json::Value) -> Result<(), ManifestError> {
        if value.is_null() {
            return Ok(()); // an empty document (`---` at the end)
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let api = value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or("");
        let name = value
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_owned();
        let schema = |kind: &str, source| ManifestError::Schema {
            origin: origin.into(),
            kind: kind.into(),
            name: name.clone(),
            source,
        };
        match (api, kind) {
            (_, "List") | (_, "ServiceList") | (_, "EndpointSliceList") | (_, "NodeList") => {
                let items = match value.get("items") {
                    Some(serde_json::Value::Array(items)) => items.clone(),
                    _ => Vec::new(),
                };
                let item_kind = kind.strip_suffix("List").unwrap_or("");
                for mut item in items {
                    // Typed lists from the API omit each item's kind.
                    if item.get("kind").is_none() && !item_kind.is_empty() {
                        if let Some(o) = item.as_object_mut() {
                            o.insert("kind".into(), item_kind.into());
                            let api = if item_kind == "EndpointSlice" {
                                "discovery.k8s.io/v1"
                            } else {
                                "v1"
                            };
                            o.insert("apiVersion".into(), api.into());
                        }
                    }
                    self.add_value(origin, item)?;
                }
            }
            ("v1", "Service") => self
                .services
                .push(serde_json::from_value(value).map_err(|e| schema("Service", e))?),
            ("discovery.k8s.io/v1", "EndpointSlice") => self
                .slices
                .push(serde_json::from_value(value).map_err(|e| schema("EndpointSlice", e))?),
            ("v1", "Node") => self
                .nodes
                .push(serde_json::from_value(value).map_err(|e| schema("Node", e))?),
            _ => self.other_kinds.push(format!("{api}/{kind}")),
        }
        Ok(())
    }
}
