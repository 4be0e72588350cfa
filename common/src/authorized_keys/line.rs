//! Reading one `authorized_keys` line exactly as OpenSSH 9.2p1's sshd does.
//!
//! Which key a line holds is a security decision here: in preserve mode the agent drops every
//! user line whose key keyward denied, and a line keyward misreads while sshd reads it as the
//! denied key would keep that key alive. So this is a transcription of sshd's reader, not a
//! "reasonable" parser. Each function names the OpenSSH function it follows (openssh-portable,
//! tag `V_9_2_P1`); the built-in key types are those of Debian 12's build (OpenSSL with NIST
//! P-521, security keys, no XMSS).
//!
//! - **Lines** (`auth_check_authkeys_file`, `auth2-pubkeyfile.c`): the file is split at `'\n'`
//!   (`getline`) and everything after a line's first NUL byte is invisible (C strings). Leading
//!   spaces and tabs are skipped (`skip_space`, only those two); an empty rest or a rest
//!   starting with `#` is not a key line. `'\r'`, `'\v'` and `'\f'` are not skipped there.
//! - **Options** (`auth_check_authkey_line`): the line is first read as a bare key; only if that
//!   fails is a leading options field skipped (`sshkey_advance_past_options`, `authfile.c`: it
//!   ends at the first space or tab outside double quotes, `\"` never toggles the quote, an
//!   unterminated quote makes the line unusable), then spaces and tabs, and the key is read
//!   again.
//! - **Key** (`sshkey_read`, `sshkey.c`): the type name is everything up to the first space or
//!   tab and must be a key type's full name, byte for byte (`peek_type_nid`): the shortnames
//!   (`ED25519`, `RSA`) and other cases are *not* accepted here, but the signature-only names
//!   `rsa-sha2-256` and `rsa-sha2-512` (meaning RSA) and `webauthn-sk-ecdsa-sha2-nistp256@openssh.com`
//!   (meaning the security-key ECDSA type) are. A space or tab must follow the name. The blob is
//!   the next run of bytes up to a space or tab (or the end) and is decoded by [`b64_pton`].
//! - **Blob** (`sshkey_fromb` → `sshkey_from_blob_internal` and each type's
//!   `deserialize_public`): the type name inside the blob goes through `sshkey_type_from_name`,
//!   which *does* accept the shortnames case-insensitively (`ed25519`, `Rsa`, `ECDSA-SK`, but never
//!   a certificate's) and the signature-only names; strings read as C strings may end with one NUL
//!   (`sshbuf_get_cstring`); mpints may carry any number of leading zero bytes, are refused if
//!   negative or longer than 2049 bytes (`sshbuf_get_bignum2`); an RSA modulus must have at least
//!   1024 bits; an Ed25519 key is 32 bytes; an ECDSA curve name must be exact (`nistp256`), the
//!   blob's type name must be the curve's full name (`ecdsa-sha2-nistp256`, not `ECDSA`), the point
//!   must be uncompressed, on the curve and pass `sshkey_ec_validate_public`; security keys add
//!   an application string; nothing may follow the key's fields. The blob's type must be the
//!   line's type (and the same curve).
//! - **Certificates** (`*-cert-v01@openssh.com`): sshd reads a line with the type of the key the
//!   client offers (`sshkey_new(want_keytype)`). For a plain key a certificate line is a type
//!   mismatch, so sshd goes on to the options path, which treats the certificate's type name as
//!   options; its blob is then never a type name. For a certificate offered, sshd compares the
//!   line's key with the certificate's CA key, which is a plain key (`sshkey_equal` compares
//!   types exactly), so a certificate line never authorises anything. This reader therefore
//!   treats a certificate type name like an unknown one (then tries the options path, as sshd
//!   does). `ssh-keygen -l` does print a fingerprint for certificate lines; sshd is the truth.
//!
//! What a line *means* (`from=`, `cert-authority`, `expiry-time`...) is not judged here: a line
//! holding a denied key is dropped whatever its options say (`cert-authority` would let
//! certificates signed by that key in). The key's identity is its fingerprint, computed as
//! OpenSSH computes it: SHA-256 over the key re-serialised canonically (`sshkey_fingerprint`:
//! canonical type name, minimal mpints, C strings without their NUL), so a key written with
//! padded mpints or a shortname in its blob has the same fingerprint as the original.

use std::ops::Range;

// num-bigint, not a curve crate: x509-parser (the agent's certificates) already brings it, and
// p256/p384/p521 would add elliptic-curve and crypto-bigint 0.5 to the agent for one check.
use num_bigint::BigUint;
use sha2::{Digest, Sha256};

use crate::keys::Fingerprint;

/// A line sshd would read as a plain public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLine {
    /// The key type's canonical name (`ssh-rsa` also for a line written `rsa-sha2-512`).
    pub algorithm: &'static str,
    /// SHA-256 fingerprint, as `ssh-keygen -l -E sha256` and sshd's log print it.
    pub fingerprint: Fingerprint,
    /// The key blob re-serialised canonically (what the fingerprint is computed over).
    pub blob: Vec<u8>,
    /// Byte range of the options field in the line, if sshd only found the key after skipping
    /// one.
    pub options: Option<Range<usize>>,
}

/// The key `line` holds for sshd, or `None` if sshd would not read one (comment, blank, junk,
/// certificate, unknown type, bad blob). `line` is one line without its `'\n'`.
pub fn parse_line(line: &[u8]) -> Option<KeyLine> {
    // C strings end at the first NUL: nothing after it exists for sshd.
    let text = line.split(|&b| b == 0).next().unwrap_or_default();
    let start = skip_blanks(text, 0);
    if start == text.len() || text[start] == b'#' {
        return None;
    }
    if let Some(key) = read_key(&text[start..]) {
        return Some(key.into_line(None));
    }
    let end = advance_past_options(text, start)?;
    let key_start = skip_blanks(text, end);
    read_key(&text[key_start..]).map(|key| key.into_line(Some(start..end)))
}

/// `skip_space` (`misc.c`): spaces and tabs only.
fn skip_blanks(text: &[u8], mut i: usize) -> usize {
    while i < text.len() && is_blank(text[i]) {
        i += 1;
    }
    i
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `sshkey_advance_past_options` (`authfile.c`): the index of the first space or tab outside
/// quotes at or after `i`, or `None` for an unterminated quote.
fn advance_past_options(text: &[u8], mut i: usize) -> Option<usize> {
    let mut quoted = false;
    while i < text.len() && (quoted || !is_blank(text[i])) {
        if text[i] == b'\\' && text.get(i + 1) == Some(&b'"') {
            i += 1; // Skip both.
        } else if text[i] == b'"' {
            quoted = !quoted;
        }
        i += 1;
    }
    if i == text.len() && quoted {
        None
    } else {
        Some(i)
    }
}

/// The plain key types of Debian 12's OpenSSH 9.2p1 (`keyimpls[]` in `sshkey.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Ed25519,
    Ed25519Sk,
    Ecdsa(Curve),
    EcdsaSk,
    Dsa,
    Rsa,
    /// Any `*-cert-v01@openssh.com` type: never a plain key (see the module documentation).
    Cert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

struct Impl {
    name: &'static str,
    shortname: &'static str,
    key_type: KeyType,
}

/// `keyimpls[]`, in OpenSSH's order (which decides the canonical name of a type: the first).
#[rustfmt::skip]
const IMPLS: &[Impl] = &[
    Impl { name: "ssh-ed25519", shortname: "ED25519", key_type: KeyType::Ed25519 },
    Impl { name: "ssh-ed25519-cert-v01@openssh.com", shortname: "ED25519-CERT", key_type: KeyType::Cert },
    Impl { name: "sk-ssh-ed25519@openssh.com", shortname: "ED25519-SK", key_type: KeyType::Ed25519Sk },
    Impl { name: "sk-ssh-ed25519-cert-v01@openssh.com", shortname: "ED25519-SK-CERT", key_type: KeyType::Cert },
    Impl { name: "ecdsa-sha2-nistp256", shortname: "ECDSA", key_type: KeyType::Ecdsa(Curve::P256) },
    Impl { name: "ecdsa-sha2-nistp256-cert-v01@openssh.com", shortname: "ECDSA-CERT", key_type: KeyType::Cert },
    Impl { name: "ecdsa-sha2-nistp384", shortname: "ECDSA", key_type: KeyType::Ecdsa(Curve::P384) },
    Impl { name: "ecdsa-sha2-nistp384-cert-v01@openssh.com", shortname: "ECDSA-CERT", key_type: KeyType::Cert },
    Impl { name: "ecdsa-sha2-nistp521", shortname: "ECDSA", key_type: KeyType::Ecdsa(Curve::P521) },
    Impl { name: "ecdsa-sha2-nistp521-cert-v01@openssh.com", shortname: "ECDSA-CERT", key_type: KeyType::Cert },
    Impl { name: "sk-ecdsa-sha2-nistp256@openssh.com", shortname: "ECDSA-SK", key_type: KeyType::EcdsaSk },
    Impl { name: "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com", shortname: "ECDSA-SK-CERT", key_type: KeyType::Cert },
    Impl { name: "webauthn-sk-ecdsa-sha2-nistp256@openssh.com", shortname: "ECDSA-SK", key_type: KeyType::EcdsaSk },
    Impl { name: "ssh-dss", shortname: "DSA", key_type: KeyType::Dsa },
    Impl { name: "ssh-dss-cert-v01@openssh.com", shortname: "DSA-CERT", key_type: KeyType::Cert },
    Impl { name: "ssh-rsa", shortname: "RSA", key_type: KeyType::Rsa },
    Impl { name: "ssh-rsa-cert-v01@openssh.com", shortname: "RSA-CERT", key_type: KeyType::Cert },
    Impl { name: "rsa-sha2-256", shortname: "RSA", key_type: KeyType::Rsa },
    Impl { name: "rsa-sha2-256-cert-v01@openssh.com", shortname: "RSA-CERT", key_type: KeyType::Cert },
    Impl { name: "rsa-sha2-512", shortname: "RSA", key_type: KeyType::Rsa },
    Impl { name: "rsa-sha2-512-cert-v01@openssh.com", shortname: "RSA-CERT", key_type: KeyType::Cert },
];

/// `peek_type_nid`: the line's type name must be a full name, exactly.
fn peek_type(name: &[u8]) -> Option<KeyType> {
    IMPLS
        .iter()
        .find(|i| i.name.as_bytes() == name)
        .map(|i| i.key_type)
}

/// `sshkey_type_from_name`: full names exactly, or a plain type's shortname in any case.
fn type_from_name(name: &[u8]) -> Option<KeyType> {
    IMPLS
        .iter()
        .find(|i| {
            i.name.as_bytes() == name
                || (i.key_type != KeyType::Cert
                    && i.shortname.as_bytes().eq_ignore_ascii_case(name))
        })
        .map(|i| i.key_type)
}

/// `sshkey_ecdsa_nid_from_name`: the curve of an ECDSA variant's full name.
fn ecdsa_curve_from_name(name: &[u8]) -> Option<Curve> {
    IMPLS
        .iter()
        .filter(|i| i.name.as_bytes() == name)
        .find_map(|i| match i.key_type {
            KeyType::Ecdsa(curve) => Some(curve),
            KeyType::EcdsaSk => Some(Curve::P256),
            _ => None,
        })
}

/// A parsed plain key, in canonical serialisation.
struct ParsedKey {
    algorithm: &'static str,
    blob: Vec<u8>,
}

impl ParsedKey {
    fn into_line(self, options: Option<Range<usize>>) -> KeyLine {
        let digest: [u8; 32] = Sha256::digest(&self.blob).into();
        KeyLine {
            algorithm: self.algorithm,
            fingerprint: Fingerprint::from_sha256(digest),
            blob: self.blob,
            options,
        }
    }
}

/// `sshkey_read` with a plain key type wanted: `text` starts at the type name.
fn read_key(text: &[u8]) -> Option<ParsedKey> {
    let type_end = text.iter().position(|&b| is_blank(b))?; // No blank: SSH_ERR_INVALID_FORMAT.
    let line_type = peek_type(&text[..type_end])?;
    if line_type == KeyType::Cert {
        return None; // SSH_ERR_KEY_TYPE_MISMATCH for any plain key offered.
    }
    let blob_start = skip_blanks(text, type_end);
    if blob_start == text.len() {
        return None;
    }
    let blob_end = text[blob_start..]
        .iter()
        .position(|&b| is_blank(b))
        .map_or(text.len(), |n| blob_start + n);
    let blob = b64_pton(&text[blob_start..blob_end])?;
    let key = from_blob(&blob)?;
    // The blob's type (and curve) must be the line's.
    (key.key_type == line_type).then_some(key.parsed)
}

/// RFC 4648 base64 decoding exactly as OpenSSH's `b64_pton` (`openbsd-compat/base64.c`, used by
/// `sshbuf_b64tod`), in the C locale sshd runs in:
///
/// - every `isspace` byte (space, `\t`, `\n`, `\v`, `\f`, `\r`) is skipped wherever it is, even
///   between the padding characters;
/// - any other byte outside the base64 alphabet, and any byte ≥ 0x80, is an error;
/// - the first `=` ends the data: after one data character (of a group of four) it is an error;
///   after two, a second `=` must follow (blanks between allowed); after three, one `=` is
///   enough; after the padding only whitespace may follow (a third `=` is an error);
/// - the bits of a partial last group that do not make a whole byte must be zero;
/// - without padding the data must end on a group boundary (unpadded `AAA` is an error);
/// - an empty input (or only whitespace) decodes to nothing.
pub fn b64_pton(src: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(src.len() / 4 * 3 + 3);
    let mut state = 0u8;
    let mut partial = 0u8; // The bits of the next byte decoded so far (`target[tarindex]`).
    let mut i = 0;
    let mut padded = false;
    while i < src.len() {
        let ch = src[i];
        i += 1;
        if is_c_space(ch) {
            continue;
        }
        if ch == b'=' {
            padded = true;
            break;
        }
        let value = b64_value(ch)?;
        match state {
            0 => {
                partial = value << 2;
                state = 1;
            }
            1 => {
                out.push(partial | (value >> 4));
                partial = (value & 0x0f) << 4;
                state = 2;
            }
            2 => {
                out.push(partial | (value >> 2));
                partial = (value & 0x03) << 6;
                state = 3;
            }
            _ => {
                out.push(partial | value);
                partial = 0;
                state = 0;
            }
        }
    }
    if !padded {
        return (state == 0).then_some(out);
    }
    match state {
        0 | 1 => return None, // `=` in the first or second position of a group.
        2 => {
            // One byte of information: skip whitespace, then a second `=` is required.
            while i < src.len() && is_c_space(src[i]) {
                i += 1;
            }
            if src.get(i) != Some(&b'=') {
                return None;
            }
            i += 1;
        }
        _ => {}
    }
    // Only whitespace may follow the padding.
    if src[i..].iter().any(|&b| !is_c_space(b)) {
        return None;
    }
    // The bits that slopped past the last whole byte must be zero.
    (partial == 0).then_some(out)
}

/// `isspace` in the C locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn b64_value(ch: u8) -> Option<u8> {
    match ch {
        b'A'..=b'Z' => Some(ch - b'A'),
        b'a'..=b'z' => Some(ch - b'a' + 26),
        b'0'..=b'9' => Some(ch - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// A key decoded from a blob: its type (for the line's type check) and canonical form.
struct BlobKey {
    key_type: KeyType,
    parsed: ParsedKey,
}

/// `sshbuf` reads over a blob.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// `sshbuf_get_string_direct`: a u32 big-endian length and that many bytes.
    fn string(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.data.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (value, rest) = rest.split_at(len);
        self.data = rest;
        Some(value)
    }

    /// `sshbuf_get_cstring`: a string with no NUL but possibly one at its very end, which is
    /// not part of the value.
    fn cstring(&mut self) -> Option<&'a [u8]> {
        let value = self.string()?;
        match value.iter().position(|&b| b == 0) {
            None => Some(value),
            Some(nul) if nul + 1 == value.len() => Some(&value[..nul]),
            Some(_) => None,
        }
    }

    /// `sshbuf_get_bignum2`: non-negative, at most 2048 bytes of value plus one leading zero;
    /// leading zero bytes are dropped. Returns the magnitude (empty for zero).
    fn bignum(&mut self) -> Option<&'a [u8]> {
        let value = self.string()?;
        if value.first().is_some_and(|&b| b & 0x80 != 0) {
            return None;
        }
        const MAX_BIGNUM: usize = 16384 / 8;
        if value.len() > MAX_BIGNUM + 1 || (value.len() == MAX_BIGNUM + 1 && value[0] != 0) {
            return None;
        }
        let zeros = value.iter().take_while(|&&b| b == 0).count();
        Some(&value[zeros..])
    }
}

/// `sshbuf_put_string`.
fn put_string(out: &mut Vec<u8>, value: &[u8]) {
    // Every value here came out of a blob with a u32 length, so it fits.
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
}

/// `sshbuf_put_bignum2_bytes` for a magnitude without leading zeros.
fn put_bignum(out: &mut Vec<u8>, magnitude: &[u8]) {
    if magnitude.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut padded = Vec::with_capacity(magnitude.len() + 1);
        padded.push(0);
        padded.extend_from_slice(magnitude);
        put_string(out, &padded);
    } else {
        put_string(out, magnitude);
    }
}

/// `sshkey_from_blob_internal` for a plain key, returning the key re-serialised as `to_blob`
/// would (canonical name, minimal mpints, C strings without a trailing NUL).
fn from_blob(blob: &[u8]) -> Option<BlobKey> {
    let mut r = Reader { data: blob };
    let name = r.cstring()?;
    let key_type = type_from_name(name)?;
    let mut out = Vec::with_capacity(blob.len());
    let algorithm = match key_type {
        // A certificate blob is never the plain key a line's (plain) type names.
        KeyType::Cert => return None,
        KeyType::Ed25519 | KeyType::Ed25519Sk => {
            let sk = key_type == KeyType::Ed25519Sk;
            let algorithm = if sk {
                "sk-ssh-ed25519@openssh.com"
            } else {
                "ssh-ed25519"
            };
            let pk = r.string()?;
            if pk.len() != 32 {
                return None;
            }
            put_string(&mut out, algorithm.as_bytes());
            put_string(&mut out, pk);
            if sk {
                put_string(&mut out, r.cstring()?);
            }
            algorithm
        }
        KeyType::Ecdsa(_) | KeyType::EcdsaSk => {
            // The curve comes from the blob's *full* name (a shortname fails here).
            let curve = ecdsa_curve_from_name(name)?;
            let curve_name = match curve {
                Curve::P256 => "nistp256",
                Curve::P384 => "nistp384",
                Curve::P521 => "nistp521",
            };
            if r.cstring()? != curve_name.as_bytes() {
                return None; // SSH_ERR_EC_CURVE_MISMATCH
            }
            let point = r.string()?;
            if !ec_point_is_valid(curve, point) {
                return None;
            }
            let algorithm = match (key_type, curve) {
                (KeyType::EcdsaSk, _) => "sk-ecdsa-sha2-nistp256@openssh.com",
                (_, Curve::P256) => "ecdsa-sha2-nistp256",
                (_, Curve::P384) => "ecdsa-sha2-nistp384",
                (_, Curve::P521) => "ecdsa-sha2-nistp521",
            };
            put_string(&mut out, algorithm.as_bytes());
            put_string(&mut out, curve_name.as_bytes());
            put_string(&mut out, point);
            if key_type == KeyType::EcdsaSk {
                put_string(&mut out, r.cstring()?);
            }
            algorithm
        }
        KeyType::Dsa => {
            let (p, q, g, y) = (r.bignum()?, r.bignum()?, r.bignum()?, r.bignum()?);
            put_string(&mut out, b"ssh-dss");
            for value in [p, q, g, y] {
                put_bignum(&mut out, value);
            }
            "ssh-dss"
        }
        KeyType::Rsa => {
            let (e, n) = (r.bignum()?, r.bignum()?);
            // sshkey_check_rsa_length: SSH_RSA_MINIMUM_MODULUS_SIZE.
            if bit_length(n) < 1024 {
                return None;
            }
            put_string(&mut out, b"ssh-rsa");
            put_bignum(&mut out, e);
            put_bignum(&mut out, n);
            "ssh-rsa"
        }
    };
    // Nothing may follow the key.
    if !r.data.is_empty() {
        return None;
    }
    Some(BlobKey {
        key_type,
        parsed: ParsedKey {
            algorithm,
            blob: out,
        },
    })
}

/// `BN_num_bits` of a big-endian magnitude.
fn bit_length(magnitude: &[u8]) -> usize {
    match magnitude.iter().position(|&b| b != 0) {
        None => 0,
        Some(i) => (magnitude.len() - i) * 8 - magnitude[i].leading_zeros() as usize,
    }
}

/// Prime field modulus, coefficient `b` (`a` is `p - 3`) and group order of each curve.
fn curve_params(curve: Curve) -> (&'static str, &'static str, &'static str, usize) {
    match curve {
        Curve::P256 => (
            "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
            "5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b",
            "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551",
            32,
        ),
        Curve::P384 => (
            "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
            "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef",
            "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
            48,
        ),
        Curve::P521 => (
            "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "0051953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef109e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b503f00",
            "01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409",
            66,
        ),
    }
}

/// `sshbuf_get_eckey` (`get_ec`: uncompressed form only, at most 133 bytes), OpenSSL's
/// `EC_POINT_oct2point` (exact length, coordinates below the field prime, on the curve) and
/// `sshkey_ec_validate_public` (each coordinate longer than half the order's bits and below
/// `order - 1`; `n·Q = ∞` holds for every point of these cofactor-1 curves).
fn ec_point_is_valid(curve: Curve, point: &[u8]) -> bool {
    let (p_hex, b_hex, n_hex, field_len) = curve_params(curve);
    let Some((&tag, coordinates)) = point.split_first() else {
        return false;
    };
    if tag != 0x04 || coordinates.len() != 2 * field_len {
        return false;
    }
    let (Some(p), Some(b), Some(n)) = (
        BigUint::parse_bytes(p_hex.as_bytes(), 16),
        BigUint::parse_bytes(b_hex.as_bytes(), 16),
        BigUint::parse_bytes(n_hex.as_bytes(), 16),
    ) else {
        return false;
    };
    let (x_bytes, y_bytes) = coordinates.split_at(field_len);
    let (x, y) = (
        BigUint::from_bytes_be(x_bytes),
        BigUint::from_bytes_be(y_bytes),
    );
    if x >= p || y >= p {
        return false;
    }
    // y² = x³ - 3x + b (mod p)
    let lhs = (&y * &y) % &p;
    let x3 = (&x * &x * &x) % &p;
    let three_x = (&x * 3u32) % &p;
    let rhs = (x3 + &p - three_x + &b) % &p;
    if lhs != rhs {
        return false;
    }
    let half_order_bits = n.bits() / 2;
    let n_minus_1 = &n - 1u32;
    x.bits() > half_order_bits && y.bits() > half_order_bits && x < n_minus_1 && y < n_minus_1
}

#[cfg(test)]
mod tests;
