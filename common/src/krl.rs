//! OpenSSH key revocation lists (KRLs): a small, deterministic encoder of the binary format that
//! sshd's `RevokedKeys` reads, as OpenSSH's `PROTOCOL.krl` describes it.
//!
//! A [`RevocationList`] holds certificate serials and key ids revoked per CA (or for any CA), and
//! plain keys revoked by SHA-256 hash or by their whole blob; [`RevocationList::encode`] writes:
//!
//! - the header (PROTOCOL.krl section 1): magic `SSHKRL\n\0`, format version 1, `krl_version`,
//!   `generated_date`, flags 0, an empty reserved string and the comment;
//! - one `KRL_SECTION_CERTIFICATES` section per CA (section 2), the wildcard CA (an empty
//!   `ca_key`) first, then by CA key blob: the serials as ranges, bitmaps and one list
//!   (sections 2.1 to 2.3, chosen in `serials`), then the key ids (2.4), sorted;
//! - `KRL_SECTION_EXPLICIT_KEY` (section 3) with the revoked key blobs, sorted;
//! - `KRL_SECTION_FINGERPRINT_SHA256` (section 4) with the revoked SHA-256 hashes, sorted
//!   ascending as big-endian numbers, as the format requires.
//!
//! No signature section (section 6: OpenSSH 9.4 and later refuse KRLs that carry one; keyward
//! signs the desired state that carries the KRL instead) and no extensions. The output depends
//! only on the set of revocations, never on the order they were added in or on duplicates: the
//! desired state that carries it is signed and compared.
//!
//! Size per entry: a serial in the list 8 bytes, a run of serials 21 bytes (a range) or one bit
//! per serial of its span plus 18 bytes (a bitmap, for runs close together), a key id 4 bytes
//! and its length, a SHA-256 hash 36 bytes, an explicit key 4 bytes and its blob (51 for
//! Ed25519, 535 for RSA-4096); a CA's section 13 bytes, its key blob and 5 bytes a subsection.
//! 100,000 hashes are 3.6 MB; the integration test's 100,000 serials (runs, dense stretches and
//! scatter) and 10,000 hashes about 395 KB. The whole list is bounded by [`MAX_ENCODED_LEN`].
//!
//! Proven against OpenSSH's own reader and writer (`ssh-keygen -k`, `-Q`) by the integration
//! tests in `tests/tests/integration/krl.rs`.

mod serials;

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use ssh_key::PublicKey;

use crate::keys::{Fingerprint, KeyError};
use serials::Run;

/// `KRL_MAGIC` (PROTOCOL.krl 1).
const MAGIC: &[u8; 8] = b"SSHKRL\n\0";
/// `KRL_FORMAT_VERSION` (PROTOCOL.krl 1).
const FORMAT_VERSION: u32 = 1;
/// `KRL_SECTION_CERTIFICATES` (PROTOCOL.krl 2).
const SECTION_CERTIFICATES: u8 = 1;
/// `KRL_SECTION_EXPLICIT_KEY` (PROTOCOL.krl 3).
const SECTION_EXPLICIT_KEY: u8 = 2;
/// `KRL_SECTION_FINGERPRINT_SHA256` (PROTOCOL.krl 4).
const SECTION_FINGERPRINT_SHA256: u8 = 5;
/// `KRL_SECTION_CERT_KEY_ID` (PROTOCOL.krl 2.4).
const CERT_KEY_ID: u8 = 0x23;

/// The largest KRL a [`RevocationList`] accepts revocations for (64 MiB). sshd reads the whole
/// `RevokedKeys` file into one buffer of at most 128 MiB (`SSHBUF_SIZE_MAX`) at each
/// authentication, and a KRL it cannot read refuses every key: past this bound the list refuses
/// more instead of growing into a file that would lock everyone out. The bound is reckoned per
/// revocation added (a repeated serial counts again, a repeated key id or hash does not), so it
/// never underestimates the encoding.
pub const MAX_ENCODED_LEN: u64 = 64 << 20;

/// Why a revocation was refused.
#[derive(Debug, thiserror::Error)]
pub enum KrlError {
    /// OpenSSH gives serial 0 to certificates made without one and never matches it by serial
    /// (`ssh-keygen -k` refuses it too): such a certificate is revoked by its key id.
    #[error("certificate serial 0 cannot be revoked by serial; revoke the certificate by key id")]
    SerialZero,
    #[error("empty serial range {lo}-{hi}")]
    EmptyRange { lo: u64, hi: u64 },
    /// The format's strings are C strings to OpenSSH: a NUL byte would end them early.
    #[error("the {0} contains a NUL byte")]
    NulByte(&'static str),
    #[error("the key does not encode: {0}")]
    Key(ssh_key::Error),
    #[error(transparent)]
    Fingerprint(KeyError),
    #[error("the revocation list would exceed {MAX_ENCODED_LEN} bytes")]
    TooLarge,
}

/// What is revoked for one CA (or for any CA).
#[derive(Debug, Clone, Default)]
struct CaRevocations {
    /// As added: sorted and merged when encoding.
    serials: Vec<Run>,
    key_ids: BTreeSet<String>,
}

/// A KRL being built: revocations are added, then [`RevocationList::encode`] writes the file.
#[derive(Debug, Clone)]
pub struct RevocationList {
    krl_version: u64,
    generated_date: u64,
    comment: String,
    /// By CA key blob; `None`, the wildcard, sorts first.
    certificates: BTreeMap<Option<Vec<u8>>, CaRevocations>,
    explicit_keys: BTreeSet<Vec<u8>>,
    sha256: BTreeSet<[u8; 32]>,
    /// An upper bound of [`RevocationList::encode`]'s length.
    bound: u64,
}

/// The header: magic, format version, three `uint64`, two string lengths.
const HEADER_BYTES: u64 = 8 + 4 + 3 * 8 + 4 + 4;
/// The explicit key and SHA-256 sections' type and length.
const KEY_SECTIONS_BYTES: u64 = 2 * (1 + 4);
/// A certificate section without its CA key: type and length, the key's and the reserved
/// string's lengths, the list and key id subsections' type and length.
const CA_SECTION_BYTES: u64 = 1 + 4 + 4 + 4 + 2 * (1 + 4);

impl RevocationList {
    /// An empty list. `krl_version` should grow with every change (sshd does not check it);
    /// `generated_date` is in seconds since the epoch; the `comment` is shown by
    /// `ssh-keygen -Q -l` and logged by sshd at debug level.
    pub fn new(krl_version: u64, generated_date: u64, comment: &str) -> Result<Self, KrlError> {
        if comment.contains('\0') {
            return Err(KrlError::NulByte("comment"));
        }
        let mut list = Self {
            krl_version,
            generated_date,
            comment: comment.to_owned(),
            certificates: BTreeMap::new(),
            explicit_keys: BTreeSet::new(),
            sha256: BTreeSet::new(),
            bound: 0,
        };
        list.grow(HEADER_BYTES + KEY_SECTIONS_BYTES + comment.len() as u64)?;
        Ok(list)
    }

    /// Revokes the certificate with `serial` signed by `ca` (`None`: by any CA).
    pub fn revoke_serial(&mut self, ca: Option<&PublicKey>, serial: u64) -> Result<(), KrlError> {
        self.revoke_serial_range(ca, serial, serial)
    }

    /// Revokes the certificates with serials `lo..=hi` signed by `ca` (`None`: by any CA).
    pub fn revoke_serial_range(
        &mut self,
        ca: Option<&PublicKey>,
        lo: u64,
        hi: u64,
    ) -> Result<(), KrlError> {
        if lo == 0 {
            return Err(KrlError::SerialZero);
        }
        if lo > hi {
            return Err(KrlError::EmptyRange { lo, hi });
        }
        let cost = if lo == hi {
            serials::LIST_ENTRY_BYTES
        } else {
            serials::RANGE_BYTES
        };
        self.ca(ca, cost)?.serials.push(Run { lo, hi });
        Ok(())
    }

    /// Revokes every certificate with key id `key_id` signed by `ca` (`None`: by any CA).
    pub fn revoke_key_id(&mut self, ca: Option<&PublicKey>, key_id: &str) -> Result<(), KrlError> {
        if key_id.contains('\0') {
            return Err(KrlError::NulByte("key id"));
        }
        let known = self
            .certificates
            .get(&ca_blob(ca)?)
            .is_some_and(|r| r.key_ids.contains(key_id));
        if !known {
            self.ca(ca, 4 + key_id.len() as u64)?
                .key_ids
                .insert(key_id.to_owned());
        }
        Ok(())
    }

    /// Revokes the plain key whose SHA-256 hash (of its wire blob) is `digest`, however it is
    /// written, and any certificate made for it.
    pub fn revoke_sha256(&mut self, digest: [u8; 32]) -> Result<(), KrlError> {
        if !self.sha256.contains(&digest) {
            self.grow(4 + 32)?;
            self.sha256.insert(digest);
        }
        Ok(())
    }

    /// [`RevocationList::revoke_sha256`] by the fingerprint keyward records for a key.
    pub fn revoke_fingerprint(&mut self, fingerprint: &Fingerprint) -> Result<(), KrlError> {
        let digest = fingerprint.sha256().map_err(KrlError::Fingerprint)?;
        self.revoke_sha256(digest)
    }

    /// Revokes `key` by its SHA-256 hash (36 bytes, whatever the key's size).
    pub fn revoke_key(&mut self, key: &PublicKey) -> Result<(), KrlError> {
        let blob = key.to_bytes().map_err(KrlError::Key)?;
        self.revoke_sha256(Sha256::digest(&blob).into())
    }

    /// Revokes `key` by listing its whole blob (PROTOCOL.krl 3). [`RevocationList::revoke_key`]
    /// is smaller for any key but the tiniest; this is for readers that predate SHA-256 hashes
    /// (OpenSSH before 7.9).
    pub fn revoke_key_explicit(&mut self, key: &PublicKey) -> Result<(), KrlError> {
        let blob = key.to_bytes().map_err(KrlError::Key)?;
        if !self.explicit_keys.contains(&blob) {
            self.grow(4 + blob.len() as u64)?;
            self.explicit_keys.insert(blob);
        }
        Ok(())
    }

    /// The KRL file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::try_from(self.bound).unwrap_or(0));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&self.krl_version.to_be_bytes());
        out.extend_from_slice(&self.generated_date.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes()); // flags: none defined
        put_string(&mut out, b""); // reserved
        put_string(&mut out, self.comment.as_bytes());

        let mut section = Vec::new();
        for (ca, revoked) in &self.certificates {
            section.clear();
            put_string(&mut section, ca.as_deref().unwrap_or_default());
            put_string(&mut section, b""); // reserved
            serials::encode(&serials::coalesce(&revoked.serials), &mut section);
            let ids = revoked.key_ids.iter().map(String::as_bytes);
            put_strings_section(&mut section, CERT_KEY_ID, ids);
            put_section(&mut out, SECTION_CERTIFICATES, &section);
        }
        let blobs = self.explicit_keys.iter().map(Vec::as_slice);
        put_strings_section(&mut out, SECTION_EXPLICIT_KEY, blobs);
        // A BTreeSet of byte arrays iterates in memcmp order: ascending big-endian numbers.
        let hashes = self.sha256.iter().map(<[u8; 32]>::as_slice);
        put_strings_section(&mut out, SECTION_FINGERPRINT_SHA256, hashes);
        out
    }

    /// The revocations of `ca`, made (and its section reckoned) when new; reckons `cost` more.
    fn ca(&mut self, ca: Option<&PublicKey>, cost: u64) -> Result<&mut CaRevocations, KrlError> {
        let blob = ca_blob(ca)?;
        let new = if self.certificates.contains_key(&blob) {
            0
        } else {
            CA_SECTION_BYTES + blob.as_ref().map_or(0, |b| b.len() as u64)
        };
        self.grow(new + cost)?;
        Ok(self.certificates.entry(blob).or_default())
    }

    fn grow(&mut self, bytes: u64) -> Result<(), KrlError> {
        let bound = self.bound.saturating_add(bytes);
        if bound > MAX_ENCODED_LEN {
            return Err(KrlError::TooLarge);
        }
        self.bound = bound;
        Ok(())
    }
}

/// The wire blob of a CA key; `None` for the wildcard.
fn ca_blob(ca: Option<&PublicKey>) -> Result<Option<Vec<u8>>, KrlError> {
    ca.map(PublicKey::to_bytes)
        .transpose()
        .map_err(KrlError::Key)
}

/// A section or subsection: its type byte and its data as a `string`.
fn put_section(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    out.push(kind);
    put_string(out, data);
}

/// A section or subsection that is a sequence of `string`s; nothing when there are none (the
/// format wants at least one).
fn put_strings_section<'a>(out: &mut Vec<u8>, kind: u8, items: impl Iterator<Item = &'a [u8]>) {
    let mut data = Vec::new();
    for item in items {
        put_string(&mut data, item);
    }
    if !data.is_empty() {
        put_section(out, kind, &data);
    }
}

/// An SSH `string`: `uint32` length, then the bytes. Every length here is bounded by
/// [`MAX_ENCODED_LEN`], far below `u32::MAX`.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> PublicKey {
        PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFZRjBwaIk4hXz4AACit+nwCZMU2l9zlVIVikYLE21C8 ca",
        )
        .unwrap()
    }

    #[test]
    fn a_tiny_krl_is_byte_for_byte_as_hand_checked() {
        let mut krl = RevocationList::new(3, 0x0102_0304, "k").unwrap();
        krl.revoke_serial(None, 5).unwrap();
        krl.revoke_key_id(None, "id").unwrap();
        krl.revoke_sha256([0xab; 32]).unwrap();
        let mut expected: Vec<u8> = Vec::new();
        expected.extend_from_slice(b"SSHKRL\n\0");
        expected.extend_from_slice(&[0, 0, 0, 1]); // format version
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]); // krl_version
        expected.extend_from_slice(&[0, 0, 0, 0, 1, 2, 3, 4]); // generated_date
        expected.extend_from_slice(&[0; 8]); // flags
        expected.extend_from_slice(&[0, 0, 0, 0]); // reserved
        expected.extend_from_slice(&[0, 0, 0, 1, b'k']); // comment
        // Certificates, wildcard CA: ca_key "", reserved "", list [5], key ids ["id"]:
        // 4 + 4 + (1 + 4 + 8) + (1 + 4 + 4 + 2) = 32 bytes.
        expected.extend_from_slice(&[1, 0, 0, 0, 32]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0x20, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5]);
        expected.extend_from_slice(&[0x23, 0, 0, 0, 6, 0, 0, 0, 2, b'i', b'd']);
        // SHA-256 hashes: one string of 32 bytes.
        expected.extend_from_slice(&[5, 0, 0, 0, 36, 0, 0, 0, 32]);
        expected.extend_from_slice(&[0xab; 32]);
        assert_eq!(krl.encode(), expected);
    }

    #[test]
    fn a_ca_section_names_its_key_by_wire_blob() {
        let mut krl = RevocationList::new(0, 0, "").unwrap();
        krl.revoke_serial(Some(&ca()), 9).unwrap();
        let bytes = krl.encode();
        let blob = ca().to_bytes().unwrap();
        let section = &bytes[HEADER_BYTES as usize..];
        assert_eq!(section[0], SECTION_CERTIFICATES);
        assert_eq!(&section[5..9], &(blob.len() as u32).to_be_bytes());
        assert_eq!(&section[9..9 + blob.len()], &blob[..]);
    }

    /// Every kind of revocation, added in `order`.
    fn build(order: &[usize]) -> Vec<u8> {
        let ca = ca();
        let mut krl = RevocationList::new(7, 1_700_000_000, "state 7").unwrap();
        for &i in order {
            match i % 6 {
                0 => krl.revoke_serial(Some(&ca), 1 + (i as u64) * 3).unwrap(),
                1 => krl
                    .revoke_serial_range(None, 100 + i as u64, 400 + i as u64)
                    .unwrap(),
                2 => krl.revoke_key_id(Some(&ca), &format!("id-{i}")).unwrap(),
                3 => krl.revoke_sha256([i as u8; 32]).unwrap(),
                4 => krl.revoke_key_id(None, &format!("any-{}", i % 4)).unwrap(),
                _ => krl.revoke_serial(None, u64::MAX - i as u64).unwrap(),
            }
        }
        krl.encode()
    }

    #[test]
    fn the_bytes_depend_on_the_set_only() {
        let forward: Vec<usize> = (0..60).collect();
        let backward: Vec<usize> = (0..60).rev().collect();
        let mut twice = forward.clone();
        twice.extend(&backward);
        let mut shuffled = forward.clone();
        shuffled.sort_by_key(|i| (i * 37) % 61);
        let reference = build(&forward);
        assert_eq!(build(&forward), reference);
        assert_eq!(build(&backward), reference);
        assert_eq!(build(&twice), reference);
        assert_eq!(build(&shuffled), reference);
        assert_ne!(build(&forward[1..]), reference);
    }

    #[test]
    fn hashes_are_sorted_as_big_endian_numbers_without_duplicates() {
        let mut krl = RevocationList::new(0, 0, "").unwrap();
        let mut high = [0u8; 32];
        high[0] = 0x80;
        let mut low = [0xffu8; 32];
        low[0] = 0x7f;
        for digest in [high, low, high, [0; 32]] {
            krl.revoke_sha256(digest).unwrap();
        }
        let bytes = krl.encode();
        let hashes = &bytes[bytes.len() - 3 * 36..];
        assert_eq!(bytes[bytes.len() - 3 * 36 - 5], SECTION_FINGERPRINT_SHA256);
        assert_eq!(&hashes[4..36], &[0; 32]);
        assert_eq!(&hashes[40..72], &low);
        assert_eq!(&hashes[76..108], &high);
    }

    #[test]
    fn a_fingerprint_revokes_its_key() {
        let key = ca();
        let mut by_key = RevocationList::new(0, 0, "").unwrap();
        by_key.revoke_key(&key).unwrap();
        let mut by_fingerprint = RevocationList::new(0, 0, "").unwrap();
        by_fingerprint
            .revoke_fingerprint(&Fingerprint::of(&key))
            .unwrap();
        assert_eq!(by_key.encode(), by_fingerprint.encode());
    }

    #[test]
    fn what_openssh_cannot_read_is_refused() {
        let mut krl = RevocationList::new(0, 0, "").unwrap();
        assert!(matches!(
            krl.revoke_serial(None, 0),
            Err(KrlError::SerialZero)
        ));
        assert!(matches!(
            krl.revoke_serial_range(Some(&ca()), 0, 10),
            Err(KrlError::SerialZero)
        ));
        assert!(matches!(
            krl.revoke_serial_range(None, 10, 9),
            Err(KrlError::EmptyRange { lo: 10, hi: 9 })
        ));
        assert!(matches!(
            krl.revoke_key_id(None, "a\0b"),
            Err(KrlError::NulByte(_))
        ));
        assert!(matches!(
            RevocationList::new(0, 0, "\0"),
            Err(KrlError::NulByte(_))
        ));
        // Nothing refused was added.
        assert_eq!(
            krl.encode(),
            RevocationList::new(0, 0, "").unwrap().encode()
        );
    }

    #[test]
    fn the_size_bound_holds_and_is_enforced() {
        let ca = ca();
        let mut krl = RevocationList::new(1, 2, "bound").unwrap();
        for i in 1..=5_000u64 {
            krl.revoke_serial(Some(&ca), i * (1 + i % 7)).unwrap();
            krl.revoke_serial_range(None, i * 1000, i * 1000 + i % 300)
                .unwrap();
            krl.revoke_key_id(Some(&ca), &format!("tenant-{i}"))
                .unwrap();
            krl.revoke_sha256(Sha256::digest(i.to_be_bytes()).into())
                .unwrap();
        }
        krl.revoke_key_explicit(&ca).unwrap();
        assert!(krl.encode().len() as u64 <= krl.bound);

        let long_id = "x".repeat(1 << 20);
        let mut full = RevocationList::new(0, 0, "").unwrap();
        for _ in 0..100 {
            full.revoke_key_id(None, &long_id).unwrap(); // a repeat costs nothing
        }
        let refused =
            (0..100).find_map(|i| full.revoke_key_id(None, &format!("{i}{long_id}")).err());
        assert!(matches!(refused, Some(KrlError::TooLarge)));
    }
}
