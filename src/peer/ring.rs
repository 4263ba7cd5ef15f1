//! Who owns a unit: rendezvous (highest-random-weight) hashing of (build,
//! file, unit index) over the fleet's members, this host included. Every
//! host with the same member list picks the same owner without talking to
//! the others, and a member joining or leaving moves only the units it
//! gains or held (about 1/n of them), so the fleet's caches stay warm.
//!
//! The weight is FNV-1a over the member's URL and the unit, finished with
//! splitmix64's mixer: fixed, so hosts built by any version agree (std's
//! `DefaultHasher` promises no stable output).

use uuid::Uuid;

use crate::format::FileKind;

/// One member of the fleet: a peer's URL, or this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `http://HOST:PORT` or `https://HOST:PORT`, no trailing `/`.
    pub url: String,
    /// This host (its own URL is in the list).
    pub is_self: bool,
}

/// The fleet's members, in any order.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    members: Vec<Member>,
}

impl Ring {
    /// A ring of `peers` (URLs; duplicates count once) where the entry
    /// equal to `self_url`, if any, is this host. This host owns units only
    /// when it is listed: a list without it sends every unit to a peer.
    pub fn new(peers: &[String], self_url: Option<&str>) -> Ring {
        let mut members: Vec<Member> = Vec::new();
        for url in peers {
            if members.iter().all(|m| m.url != *url) {
                members.push(Member {
                    is_self: Some(url.as_str()) == self_url,
                    url: url.clone(),
                });
            }
        }
        Ring { members }
    }

    /// The members, as given.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The owner of `build`'s `file` unit `unit` (chunk or frame index);
    /// `None` when the ring is empty.
    pub fn owner(&self, build: Uuid, file: FileKind, unit: u64) -> Option<&Member> {
        self.members
            .iter()
            .max_by_key(|m| (weight(&m.url, build, file, unit), m.url.as_str()))
    }
}

/// The weight of `member` for one unit.
fn weight(member: &str, build: Uuid, file: FileKind, unit: u64) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let parts: [&[u8]; 4] = [
        member.as_bytes(),
        build.as_bytes(),
        file.name().as_bytes(),
        &unit.to_le_bytes(),
    ];
    for part in parts {
        for &b in part {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h = (h ^ 0xff).wrapping_mul(PRIME);
    }
    // splitmix64's finalizer: FNV's low bits alone are poorly mixed.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:5008")).collect()
    }

    const BUILD: Uuid = Uuid::from_u128(0x4c8c_ee25_4691_41ad_bee6_af9d_9284_b55b);

    #[test]
    fn owner_is_stable_and_independent_of_order() {
        let peers = urls(5);
        let a = Ring::new(&peers, None);
        let mut reversed = peers.clone();
        reversed.reverse();
        let b = Ring::new(&reversed, None);
        for unit in 0..1000 {
            let owner = a.owner(BUILD, FileKind::Memfile, unit).unwrap();
            assert_eq!(Some(owner), b.owner(BUILD, FileKind::Memfile, unit));
            assert_eq!(Some(owner), a.owner(BUILD, FileKind::Memfile, unit));
        }
        // A fixed function: this value is what every host computes.
        let first = a.owner(BUILD, FileKind::Memfile, 0).unwrap().url.clone();
        assert_eq!(
            first,
            Ring::new(&peers, None)
                .owner(BUILD, FileKind::Memfile, 0)
                .unwrap()
                .url
        );
    }

    #[test]
    fn units_spread_about_evenly() {
        let peers = urls(4);
        let ring = Ring::new(&peers, None);
        let mut counts = [0usize; 4];
        let units = 20_000;
        for unit in 0..units {
            let owner = ring.owner(BUILD, FileKind::Rootfs, unit).unwrap();
            counts[peers.iter().position(|p| *p == owner.url).unwrap()] += 1;
        }
        for c in counts {
            // 5000 expected; 4 sigma of a binomial is about 245.
            assert!((4600..5400).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_units() {
        let peers = urls(5);
        let all = Ring::new(&peers, None);
        let fewer = Ring::new(&peers[..4], None);
        let mut moved = 0;
        for unit in 0..5000 {
            let before = &all.owner(BUILD, FileKind::Memfile, unit).unwrap().url;
            let after = &fewer.owner(BUILD, FileKind::Memfile, unit).unwrap().url;
            if before == &peers[4] {
                moved += 1;
            } else {
                assert_eq!(before, after, "unit {unit} moved though its owner stayed");
            }
        }
        assert!(moved > 700, "the removed member held its share: {moved}");
    }

    #[test]
    fn self_is_marked_and_empty_ring_has_no_owner() {
        let peers = urls(3);
        let ring = Ring::new(&peers, Some("http://10.0.0.1:5008"));
        let selves: Vec<_> = ring.members().iter().filter(|m| m.is_self).collect();
        assert_eq!(selves.len(), 1);
        assert_eq!(selves[0].url, "http://10.0.0.1:5008");
        assert!(
            Ring::new(&[], None)
                .owner(BUILD, FileKind::Memfile, 0)
                .is_none()
        );
    }
}
