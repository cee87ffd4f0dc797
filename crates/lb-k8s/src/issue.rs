//! What the translation could not express or refused: every such field is reported as an
//! [`Issue`] naming the object and the field, never dropped silently.

use std::fmt;

/// The Kubernetes object an [`Issue`] is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// `Service`, `EndpointSlice` or `Node`.
    pub kind: &'static str,
    /// The namespace (empty for a `Node`).
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Why a field of an object did not become (all of) what it asks for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueKind {
    /// The SDK's service API has no such concept yet: the named part is not programmed.
    #[error("unsupported: {what}; not programmed: {effect}")]
    Unsupported {
        /// What the field asks for.
        what: String,
        /// What was left out because of it.
        effect: String,
    },
    /// The value is not valid: the named part is not programmed.
    #[error("invalid value {value:?}: {rule}")]
    Invalid {
        /// The value given.
        value: String,
        /// The rule it breaks and how to fix it.
        rule: String,
    },
    /// A frontend the datapath's rules refuse (`lb_control::ConfigError`): not programmed.
    #[error("frontend {frontend} refused by the datapath's rules")]
    Refused {
        /// The frontend (address:port/protocol).
        frontend: String,
        /// The datapath's reason.
        #[source]
        source: lb_control::ConfigError,
    },
    /// Two services claim one frontend: the later one (by namespace/name) is not programmed
    /// there.
    #[error("frontend {frontend} is already served by {owner}: not programmed for this service")]
    Conflict {
        /// The frontend.
        frontend: String,
        /// The service that has it.
        owner: String,
    },
}

/// One field the translation reports: the object, the field's path in it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: field `{field}`: {kind}")]
pub struct Issue {
    /// The object.
    pub object: ObjectRef,
    /// The field's path, as `kubectl explain` names it (`spec.loadBalancerSourceRanges`).
    pub field: String,
    /// What happened.
    #[source]
    pub kind: IssueKind,
}

impl Issue {
    /// Whether the issue is an SDK limitation (as opposed to a wrong value in the object).
    #[must_use]
    pub fn is_unsupported(&self) -> bool {
        matches!(self.kind, IssueKind::Unsupported { .. })
    }
}
