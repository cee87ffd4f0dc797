//! The annotations and labels the translation reads, and the parsing of the SDK's own ones.

use std::collections::BTreeMap;

use lb_control::{ForwardingMode, Selection, MAGLEV_DEFAULT_TABLE_SIZE, MAGLEV_TABLE_SIZES};

/// Label of services (and slices) owned by another proxy (kube-proxy skips them).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label of a headless service's objects (kube-proxy skips them).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Node label with the node's zone, for topology hints.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Topology-aware routing by annotation (`Auto`), as kube-proxy reads it.
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
/// Backend selection: `random` (default) or `maglev`.
pub const ANNOTATION_SELECTION: &str = "lb.dataplane.io/selection";
/// Maglev table size, one of [`MAGLEV_TABLE_SIZES`] (default [`MAGLEV_DEFAULT_TABLE_SIZE`]).
pub const ANNOTATION_MAGLEV_TABLE_SIZE: &str = "lb.dataplane.io/maglev-table-size";
/// Forwarding mode to backends on other nodes: `snat` (default), `dsr`, `tunnel`, `hybrid`.
pub const ANNOTATION_FORWARDING_MODE: &str = "lb.dataplane.io/forwarding-mode";

/// The selection the annotations ask for, or the annotation and the rule it breaks.
pub(crate) fn selection(
    a: Option<&BTreeMap<String, String>>,
) -> Result<Selection, (&'static str, String, String)> {
    let get = |k: &str| a.and_then(|a| a.get(k));
    let size = match get(ANNOTATION_MAGLEV_TABLE_SIZE) {
        None => MAGLEV_DEFAULT_TABLE_SIZE,
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if MAGLEV_TABLE_SIZES.contains(&n) => n,
            _ => {
                return Err((
                    ANNOTATION_MAGLEV_TABLE_SIZE,
                    v.clone(),
                    format!("use one of {MAGLEV_TABLE_SIZES:?}"),
                ))
            }
        },
    };
    match get(ANNOTATION_SELECTION).map(|s| s.trim().to_ascii_lowercase()) {
        None => Ok(Selection::Random),
        Some(s) if s == "random" => Ok(Selection::Random),
        Some(s) if s == "maglev" => Ok(Selection::Maglev { table_size: size }),
        Some(s) => Err((ANNOTATION_SELECTION, s, "use `random` or `maglev`".into())),
    }
}

/// The forwarding mode the annotation asks for.
pub(crate) fn forwarding_mode(
    a: Option<&BTreeMap<String, String>>,
    default: ForwardingMode,
) -> Result<ForwardingMode, (&'static str, String, String)> {
    match a
        .and_then(|a| a.get(ANNOTATION_FORWARDING_MODE))
        .map(|s| s.trim().to_ascii_lowercase())
    {
        None => Ok(default),
        Some(s) => match s.as_str() {
            "snat" => Ok(ForwardingMode::Snat),
            "dsr" => Ok(ForwardingMode::Dsr),
            "tunnel" => Ok(ForwardingMode::Tunnel),
            "hybrid" => Ok(ForwardingMode::Hybrid),
            _ => Err((
                ANNOTATION_FORWARDING_MODE,
                s,
                "use `snat`, `dsr`, `tunnel` or `hybrid`".into(),
            )),
        },
    }
}
