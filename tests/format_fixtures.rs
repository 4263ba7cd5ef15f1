//! Decodes every header of the independent E2B-format fixture stores
//! (tests/fixtures/e2b, written by a separate implementation) and checks it
//! against the store's manifest.json, then re-encodes it in its own version.

mod common;

use std::collections::BTreeSet;

use common::fixtures::{fixture_stores, manifest};
use serde_json::Value;
use tdfs::format::{FileKind, Header, ObjectKey};
use uuid::Uuid;

fn uuid(v: &Value) -> Uuid {
    Uuid::parse_str(v.as_str().expect("uuid string")).unwrap()
}

fn num(v: &Value) -> u64 {
    v.as_u64().expect("number")
}

#[test]
fn every_fixture_header_matches_its_manifest() {
    let mut checked = 0;
    for store in fixture_stores() {
        let manifest = manifest(&store);
        let version = num(&manifest["options"]["header_version"]) as u16;
        for build in manifest["builds"].as_array().unwrap() {
            let build_id = uuid(&build["build_id"]);
            for kind in FileKind::ALL {
                let file = &build["files"][kind.name()];
                let key = ObjectKey::header(build_id, kind);
                let what = format!("{}: {key}", store.display());
                assert_eq!(file["header"].as_str().unwrap(), key.to_string(), "{what}");
                let bytes = std::fs::read(store.join(key.to_string())).unwrap();
                let h = Header::decode(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));

                let md = &h.metadata;
                assert_eq!(h.version(), version, "{what}");
                assert_eq!(md.size, num(&file["size"]), "{what}");
                assert_eq!(md.block_size, num(&file["block_size"]), "{what}");
                assert_eq!(md.generation, num(&build["generation"]), "{what}");
                assert_eq!(md.build_id, build_id, "{what}");
                assert_eq!(md.base_build_id, uuid(&build["base_build_id"]), "{what}");

                // The oracle counts the full mapping list, zero ranges
                // included, even for V5 where the file omits them and decode
                // fills the gaps with nil mappings.
                assert_eq!(h.mappings.len() as u64, num(&file["mappings"]), "{what}");

                let own_frames = h.build(&build_id).map_or(0, |b| b.frames.frames().len());
                assert_eq!(own_frames as u64, num(&file["frames"]), "{what}");
                if version >= 4 {
                    let own = h.build(&build_id).expect("own build listed");
                    assert_eq!(
                        own.frames.compression().name(),
                        file["compression"],
                        "{what}"
                    );
                }

                let referenced: BTreeSet<Uuid> =
                    h.mappings.referenced_builds().into_iter().collect();
                let expected: BTreeSet<Uuid> = file["referenced_builds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(uuid)
                    .collect();
                assert_eq!(referenced, expected, "{what}");

                let again = Header::decode(&h.encode(version).unwrap()).unwrap();
                assert_eq!(again, h, "{what}: re-encoded V{version}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * 3 * 2);
}
