//! Revoked certificate serials as KRL certificate subsections (PROTOCOL.krl 2.1 to 2.3).
//!
//! The serials of one CA are sorted and merged into disjoint runs, then written as compactly as
//! a simple greedy plan allows: a long run as one `KRL_SECTION_CERT_SERIAL_RANGE` (21 bytes
//! whatever its length), runs close together as one `KRL_SECTION_CERT_SERIAL_BITMAP` (one bit
//! per serial of its span and 18 bytes) when that is smaller than writing them one by one, and
//! every other serial in a single `KRL_SECTION_CERT_SERIAL_LIST` (8 bytes a serial) after them.
//! The plan depends only on the set of serials, so the bytes do too.

use super::{put_section, put_string};

/// `KRL_SECTION_CERT_SERIAL_LIST`: `uint64` serials (PROTOCOL.krl 2.1).
const SERIAL_LIST: u8 = 0x20;
/// `KRL_SECTION_CERT_SERIAL_RANGE`: `uint64 serial_min, uint64 serial_max` (PROTOCOL.krl 2.2).
const SERIAL_RANGE: u8 = 0x21;
/// `KRL_SECTION_CERT_SERIAL_BITMAP`: `uint64 serial_offset, mpint bitmap` (PROTOCOL.krl 2.3).
const SERIAL_BITMAP: u8 = 0x22;

/// A subsection's type byte and `string` length.
const SUBSECTION_HEADER: u64 = 1 + 4;
/// A range subsection: its header and two `uint64`.
pub(super) const RANGE_BYTES: u64 = SUBSECTION_HEADER + 16;
/// One serial in the list subsection.
pub(super) const LIST_ENTRY_BYTES: u64 = 8;
/// A run at least this long is smaller as a range than as bits of a bitmap.
const LONG_RUN: u64 = RANGE_BYTES * 8;
/// Runs further apart than this many unrevoked serials are never put in one bitmap: the gap
/// would cost more than a list entry.
const MAX_GAP: u64 = 64;
/// The widest bitmap written (1 KiB). OpenSSH reads the bitmap as an `mpint` and refuses one
/// over 2,048 bytes (`SSHBUF_MAX_BIGNUM`), which would make sshd refuse every login.
const MAX_BITMAP_BITS: u64 = 8192;

/// Revoked serials `lo..=hi`; `lo <= hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Run {
    pub(super) lo: u64,
    pub(super) hi: u64,
}

impl Run {
    /// How many serials (up to 2^64, hence `u128`).
    fn len(self) -> u128 {
        u128::from(self.hi - self.lo) + 1
    }

    /// The bytes of the run written on its own: a range, or list entries when shorter.
    fn alone_cost(self) -> u128 {
        (self.len() * u128::from(LIST_ENTRY_BYTES)).min(u128::from(RANGE_BYTES))
    }
}

/// Sorts `ranges` and merges those that overlap or touch: the result is ascending, and two
/// neighbours have at least one unrevoked serial between them.
pub(super) fn coalesce(ranges: &[Run]) -> Vec<Run> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut runs: Vec<Run> = Vec::with_capacity(sorted.len());
    for run in sorted {
        match runs.last_mut() {
            Some(last) if run.lo <= last.hi.saturating_add(1) => last.hi = last.hi.max(run.hi),
            _ => runs.push(run),
        }
    }
    runs
}

/// Appends the subsections for `runs` (from [`coalesce`]) to `out`.
pub(super) fn encode(runs: &[Run], out: &mut Vec<u8>) {
    let mut list: Vec<u64> = Vec::new();
    let mut group: Vec<Run> = Vec::new();
    for &run in runs {
        if run.len() >= u128::from(LONG_RUN) {
            flush(&group, &mut list, out);
            group.clear();
            put_range(run, out);
            continue;
        }
        if let (Some(first), Some(last)) = (group.first(), group.last()) {
            let gap = run.lo - last.hi - 1;
            let span = u128::from(run.hi - first.lo) + 1;
            if gap > MAX_GAP || span > u128::from(MAX_BITMAP_BITS) {
                flush(&group, &mut list, out);
                group.clear();
            }
        }
        group.push(run);
    }
    flush(&group, &mut list, out);
    if !list.is_empty() {
        let mut data = Vec::with_capacity(list.len() * 8);
        for serial in list {
            data.extend_from_slice(&serial.to_be_bytes());
        }
        put_section(out, SERIAL_LIST, &data);
    }
}

/// Writes a group of short runs close together: as one bitmap when that is smaller, else each
/// run alone (ranges now, single serials into `list`).
fn flush(group: &[Run], list: &mut Vec<u64>, out: &mut Vec<u8>) {
    if group.len() > 1 {
        let bitmap = bitmap(group);
        let bitmap_cost = SUBSECTION_HEADER + 8 + 4 + bitmap.len() as u64;
        let alone: u128 = group.iter().map(|run| run.alone_cost()).sum();
        if u128::from(bitmap_cost) < alone {
            let mut data = Vec::with_capacity(12 + bitmap.len());
            data.extend_from_slice(&group[0].lo.to_be_bytes());
            put_string(&mut data, &bitmap);
            put_section(out, SERIAL_BITMAP, &data);
            return;
        }
    }
    for &run in group {
        if run.alone_cost() == u128::from(RANGE_BYTES) {
            put_range(run, out);
        } else {
            list.extend(run.lo..=run.hi);
        }
    }
}

fn put_range(run: Run, out: &mut Vec<u8>) {
    let mut data = [0u8; 16];
    data[..8].copy_from_slice(&run.lo.to_be_bytes());
    data[8..].copy_from_slice(&run.hi.to_be_bytes());
    put_section(out, SERIAL_RANGE, &data);
}

/// The `mpint` body (without its length) whose bit N is set when serial `group[0].lo + N` is
/// revoked: big-endian, minimal (the last serial's bit is the highest set), with a zero byte in
/// front when the top bit is set, as an `mpint` is never negative.
fn bitmap(group: &[Run]) -> Vec<u8> {
    let (Some(first), Some(last)) = (group.first(), group.last()) else {
        return Vec::new();
    };
    // A group spans at most MAX_BITMAP_BITS serials, so these differences are small.
    let bits = (last.hi - first.lo) as usize + 1;
    let len = bits.div_ceil(8);
    let mut bytes = vec![0u8; len];
    for run in group {
        for serial in run.lo..=run.hi {
            let bit = (serial - first.lo) as usize;
            bytes[len - 1 - bit / 8] |= 1 << (bit % 8);
        }
    }
    if bytes[0] & 0x80 != 0 {
        bytes.insert(0, 0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lo: u64, hi: u64) -> Run {
        Run { lo, hi }
    }

    #[test]
    fn overlapping_and_touching_ranges_merge() {
        let runs = coalesce(&[
            run(10, 12),
            run(1, 1),
            run(13, 13),
            run(11, 20),
            run(2, 3),
            run(5, 5),
        ]);
        assert_eq!(runs, [run(1, 3), run(5, 5), run(10, 20)]);
        assert_eq!(
            coalesce(&[run(u64::MAX, u64::MAX), run(1, u64::MAX)]),
            [run(1, u64::MAX)]
        );
    }

    #[test]
    fn a_bitmap_is_minimal_and_never_negative() {
        // Serials 100, 102, 107: bits 0, 2 and 7; the top bit set needs a zero byte in front.
        assert_eq!(
            bitmap(&[run(100, 100), run(102, 102), run(107, 107)]),
            [0x00, 0x85]
        );
        assert_eq!(bitmap(&[run(100, 101), run(108, 108)]), [0x01, 0x03]);
    }

    #[test]
    fn each_shape_gets_its_subsection() {
        let mut out = Vec::new();
        encode(&[run(7, 7)], &mut out);
        assert_eq!(
            out,
            [&[SERIAL_LIST, 0, 0, 0, 8][..], &7u64.to_be_bytes()].concat()
        );

        out.clear();
        encode(&[run(1, u64::MAX)], &mut out);
        let range = [
            &[SERIAL_RANGE, 0, 0, 0, 16][..],
            &1u64.to_be_bytes(),
            &u64::MAX.to_be_bytes(),
        ];
        assert_eq!(out, range.concat());

        // Ten serials every other one: 19 bits (3 bytes) beat ten list entries.
        out.clear();
        let sparse: Vec<Run> = (0..10).map(|i| run(1000 + 2 * i, 1000 + 2 * i)).collect();
        encode(&sparse, &mut out);
        assert_eq!(out[0], SERIAL_BITMAP);
        assert_eq!(out.len() as u64, SUBSECTION_HEADER + 8 + 4 + 3);
    }

    #[test]
    fn bitmaps_stay_under_openssh_bignum_limit() {
        let dense: Vec<Run> = (0..40_000u64).map(|i| run(1 + 2 * i, 1 + 2 * i)).collect();
        let mut out = Vec::new();
        encode(&dense, &mut out);
        let mut rest = &out[..];
        let mut bitmaps = 0;
        while let [kind, a, b, c, d, tail @ ..] = rest {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            if *kind == SERIAL_BITMAP {
                bitmaps += 1;
                assert!(len - 12 <= 2048, "bitmap of {} bytes", len - 12);
            }
            rest = &tail[len..];
        }
        assert!(bitmaps >= 10);
    }
}
