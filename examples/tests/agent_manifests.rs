//! The sample manifests shipped next to the sample configuration translate without issues.

use lb_examples::agent::sync::read_manifest_dir;
use lb_k8s::{translate, IdAllocator, Options};

#[test]
fn the_sample_manifests_translate_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("agent/manifests");
    let (objects, fp) = read_manifest_dir(&dir).unwrap();
    let (_, again) = read_manifest_dir(&dir).unwrap();
    assert_eq!(fp, again, "the fingerprint is stable");
    let t = translate(
        &objects.services,
        &objects.slices,
        &objects.nodes,
        &Options {
            node_name: "node-a".into(),
            ..Options::default()
        },
        &mut IdAllocator::default(),
    );
    assert!(t.issues.is_empty(), "{:?}", t.issues);
    assert_eq!(t.frontends.len(), 1);
    assert_eq!(t.frontends[0].spec.backends.len(), 2);
    assert_eq!(
        t.node.unwrap().address_v4,
        Some("10.250.0.1".parse().unwrap())
    );
}
