//! Unit tests of [`RegisteredKey::parse`] over keys `ssh-keygen` (OpenSSH 9.2) wrote.

use super::*;
use ssh_key::public::{EcdsaPublicKey, Ed25519PublicKey, KeyData, SkEcdsaSha2NistP256, SkEd25519};

const KED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIafcd+g6hmp8Pxhs3aqXCYkg5pzTxfn2ZlHBT9gM6Cb ced25519";
const KECDSAB256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBK03S7pEYwaHXB3cyX1IEPNcBr+qD77I17K9CpTidlwbMNUXD9a6HxsxXQRE/QsYZGVg0YumOOtlIXQGH1Le7Cc= cecdsab256";
const KECDSAB384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBEyvPj7fDlkQRRg0b3vHuPiOWVkrMpJF4Y6G4wzCB7MzWwGKLrOPN8q6Go7YrBVHhmrwLAqBAh+j4M5ij5dEL3N4t3fCWUrReIkEqAYWwUu6tV3nVOJpPcchKP/yP1hNgw== cecdsab384";
const KECDSAB521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAFiZORbBoP4iMjPLO+EaArqL5w+wN+dqcnAELq46vdKmsqKjJhwN4RBw8O0YFNx0wgXlNtgjw7Wfy7qhMCgCtFL6gFNSPgFyXkJsUVAyEjeSOsTFixdxyWpTCYmwPEPtqayd9tt6LtCTsOAFiDxUPc8iOYl5vs/TAz7Fp0qbArWJuQxDw== cecdsab521";
const KRSAB3072: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQCiKT41WeCNFTbyy8SBCHSz1dQfGkcjraPu3y6KGiudkFusF7MpcPwDf9/z95z9C4pmSjFrl5pkNviAybSAzRbRc7x62Zjkv+H9aUSIR//9Bjo+sH+k29OXkzKuoMFUQDAr1M+Pv9NW9Xbcn922kRtY5sdTa04xQjK8Rh0gJ29rVmmLBdAdLqT08VX+EN3kPTl08Qc9vfzxETLwDecmsFkabN5PTXxBbofZbJPblh9AAaHUZ7Wvc5BKEc/gqbN76PqoyYsaWr0DzWjQ4aPeSRWvfdzkyMja5jKEzRY1aP69TCHj/oCiEtBjMcmwKdHuqRCnf2TcfqKQ+poHC5pyeeQ9OzYooWP0Qo4GahCneG2DvoJohiuk7rCeHPzdmMbUEoEn9605BDt6zHsKwXhYTWmgVHcLmPO0jHIYJIT5H3qySefeDZySuL2/t86MXcU0o5SfUOKEcZYSD7TYF6iSOe2KFHaLo/odg7ciiewg6BkMYRl14Xc7dpU0CdZozDdyF1c= crsab3072";
const KRSAB2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDKKqik6IIgo59CbVfHUzumAlxaXn8uMt+iha9NFesK6RIovLGWfde0UfL/Ym++LyJINAlngx5ff23jlur6n87T0vKtzkQztYJTNfBR9JPEBmg6G7iJL3He4BTa679HyvsrXhWkxnO1iFmruCGLO68CXA7kXwexVx5j0uYeI480alY1F6eLRXy5sjI5nh3+18MxfAp/R2PTL03R73ivzCf8VmsWVVL3M4fQf98bhxcbFxT81cmSb0/q9YrJXyQx5F8N7lpUWNkuQfaSqgN+z7ayJVG3bvySwLDc6ldeciznxg1KOu0uu3DoqkBAqrKYYdm6pWClBN2jCYc8Lu6eK+xX crsab2048";
const KDSA: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBALx7Rf4JKUdYxBSOBkfE/ooUDNHY/V9v70yU8SVIzABiKjKnC41yI04PvrIZhwws3DN7353gkJRROMULVHZ1IKKGGiAswDV1cflNtd96gs/+P+ggDnCcPCwckKf0ChCmloR5B8Nh9WczexSCVA+G4jG/ljIuZI3g4rTRSi2eLjOXAAAAFQDZW7d9BRmfe0q1xradntiiP/lGrwAAAIBDCU8zuQiDyZgtuVoLlkOxwCs/nrVcQxuZJnw8xsTkz0zvsvImLSRGFrjuiv4TR0pWM3u9ZItHVyGUdU/7Tv600f8fFVsVRbZ6HmQL6RC+qozcOZtXX0rJD+yU/iW3rihSHZyYtsVbWVIvLkAhvpYJXEq3uryxkYDq35TP5Kk5wQAAAIBpSOs1uwcue02Y8YFCCEDZ7Tp2hMhyUY0kAeV3mWAI3GrqWkmBPFKyRt6o92VFCUcMrJW7WLhk2R/pDiWU/hKnedjjpRkhIurX9eeYbVUG5t7pSImB1lm+HXiADCee5evbSeATxlNtZN3GpVeq5JHh+jHuYFTIRy3xaR1DnMJCsg== cdsa";
const KED25519_CERT: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIBDfvRuaQ9/u1jKV3NP+L10+PFDxfpcueHPYWKVLJI+NAAAAIIafcd+g6hmp8Pxhs3aqXCYkg5pzTxfn2ZlHBT9gM6CbAAAAAAAAAAAAAAABAAAAAmlkAAAABQAAAAF1AAAAAGsWpdgAAAAAaxf3sAAAAAAAAACCAAAAFXBlcm1pdC1YMTEtZm9yd2FyZGluZwAAAAAAAAAXcGVybWl0LWFnZW50LWZvcndhcmRpbmcAAAAAAAAAFnBlcm1pdC1wb3J0LWZvcndhcmRpbmcAAAAAAAAACnBlcm1pdC1wdHkAAAAAAAAADnBlcm1pdC11c2VyLXJjAAAAAAAAAAAAAAGXAAAAB3NzaC1yc2EAAAADAQABAAABgQCiKT41WeCNFTbyy8SBCHSz1dQfGkcjraPu3y6KGiudkFusF7MpcPwDf9/z95z9C4pmSjFrl5pkNviAybSAzRbRc7x62Zjkv+H9aUSIR//9Bjo+sH+k29OXkzKuoMFUQDAr1M+Pv9NW9Xbcn922kRtY5sdTa04xQjK8Rh0gJ29rVmmLBdAdLqT08VX+EN3kPTl08Qc9vfzxETLwDecmsFkabN5PTXxBbofZbJPblh9AAaHUZ7Wvc5BKEc/gqbN76PqoyYsaWr0DzWjQ4aPeSRWvfdzkyMja5jKEzRY1aP69TCHj/oCiEtBjMcmwKdHuqRCnf2TcfqKQ+poHC5pyeeQ9OzYooWP0Qo4GahCneG2DvoJohiuk7rCeHPzdmMbUEoEn9605BDt6zHsKwXhYTWmgVHcLmPO0jHIYJIT5H3qySefeDZySuL2/t86MXcU0o5SfUOKEcZYSD7TYF6iSOe2KFHaLo/odg7ciiewg6BkMYRl14Xc7dpU0CdZozDdyF1cAAAGUAAAADHJzYS1zaGEyLTUxMgAAAYBfegmcjyLvTr3iKJnf62dWPQXLydub6kXFhfjmDj6t2XQ27zAMNPSVi5b++ihjeXl/EUds9ETuiX5DZ4QR09zrb8tv2JJUF2J5M1Rta83XKQDIsXO8S0FNTi+mesKNM/YTXOgrcLg1Enybh0O6k6VYjYFPgYHTbgJe4kiQjZgsJejDmLDu3gAuj/AeRAzeOQlSgMRm5gYzj5u/SYnZToCR4rUDMukkdIg3Rxw4mVMXZHSxC6s36kjym2QvA7DPHWGsp6yI4c7BA/aLfec7Lol7BTJO0uCHxP92QHSP7Wq8cbGiZzIqlNy2XmWiHf3pOk4kXr7MnsLrhaPUIK6q+Qz9DRBb/DwSNste8blfAPG4+rU79hCleS9ga0VaRdyhhQatTSiGJA/nKfxGoPIlsQEJUM0hcAN3KCEGDeH/BtLNw6CqdyodEXamhm/8sY6e7zaO2baN57HwJ+Wr9kgUjotDcgkxQQ5GVZE8OWrYyqJsIzl4eFyf+Lai4itpBhY8Ao0= ced25519";

/// What `ssh-keygen -l -E sha256` printed for each.
const SSH_KEYGEN_FINGERPRINTS: [(&str, &str); 5] = [
    (
        KED25519,
        "SHA256:cnXWjewqpVH4U09D0V+rM8ZSKoqWaGGr6bk4Nf6vEjo",
    ),
    (
        KECDSAB256,
        "SHA256:sPiE2GRqoVkuZzNxco0OpM1cV9pQXyg7Y06/V0V3cCQ",
    ),
    (
        KECDSAB384,
        "SHA256:I9U6t9GRDuC4Iwepgt6B6EejUj4eYc4pOe7F6IoG54g",
    ),
    (
        KECDSAB521,
        "SHA256:xH24gfD5l/fRwkcwjZAb8706VxNDSYP+TCHeRlTUVmI",
    ),
    (
        KRSAB3072,
        "SHA256:1xNVODOwX8gPpnoQsDFhHj+DviPIdLc6Oz/1dio888I",
    ),
];

fn sk_ed25519() -> String {
    let data = KeyData::SkEd25519(SkEd25519::new(Ed25519PublicKey([7; 32]), "ssh:"));
    PublicKey::new(data, "yubikey").to_openssh().unwrap()
}

fn sk_ecdsa() -> String {
    let p256 = PublicKey::from_openssh(KECDSAB256).unwrap();
    let Some(EcdsaPublicKey::NistP256(point)) = p256.key_data().ecdsa().cloned() else {
        panic!("not P-256")
    };
    let data = KeyData::SkEcdsaSha2NistP256(SkEcdsaSha2NistP256::new(point, "ssh:"));
    PublicKey::new(data, "yubikey").to_openssh().unwrap()
}

#[test]
fn software_keys_are_taken_with_ssh_keygens_fingerprint_and_without_their_comment() {
    for (text, fingerprint) in SSH_KEYGEN_FINGERPRINTS {
        let key = RegisteredKey::parse(&format!("{text}\n"), false).expect(text);
        assert_eq!(key.fingerprint.as_str(), fingerprint);
        assert!(!key.fido2);
        assert_eq!(
            key.public_openssh.split(' ').count(),
            2,
            "{}",
            key.public_openssh
        );
        assert!(text.starts_with(&key.public_openssh));
    }
}

#[test]
fn security_keys_are_taken_and_marked_fido2() {
    for (text, key_type) in [
        (sk_ed25519(), "sk-ssh-ed25519@openssh.com"),
        (sk_ecdsa(), "sk-ecdsa-sha2-nistp256@openssh.com"),
    ] {
        let key = RegisteredKey::parse(&text, true).expect(&text);
        assert_eq!(key.key_type, key_type);
        assert!(key.fido2);
    }
}

#[test]
fn weak_unknown_and_dressed_up_keys_are_refused_each_with_its_reason() {
    let cases = [
        (KRSAB2048.to_owned(), "key_too_weak"),
        (KDSA.to_owned(), "key_type_not_allowed"),
        (KED25519_CERT.to_owned(), "public_key_is_certificate"),
        (format!("no-pty {KED25519}"), "public_key_has_options"),
        (
            format!("command=\"/bin/sh\" {KED25519}"),
            "public_key_has_options",
        ),
        (
            format!("{KED25519}\n{KECDSAB256}"),
            "public_key_not_one_line",
        ),
        (format!("{KED25519}\0"), "public_key_not_one_line"),
        ("ssh-ed25519 AAAA".to_owned(), "public_key_unreadable"),
        ("hello".to_owned(), "public_key_unreadable"),
        (String::new(), "public_key_unreadable"),
        ("x".repeat(MAX_PUBLIC_KEY_BYTES + 1), "public_key_too_large"),
    ];
    for (text, code) in cases {
        let refused = RegisteredKey::parse(&text, false).expect_err(&text);
        assert_eq!(refused.code(), code, "{text:.80}: {refused}");
    }
}

#[test]
fn an_ecdsa_point_off_its_curve_is_refused_as_sshd_would() {
    let good = PublicKey::from_openssh(KECDSAB256).unwrap();
    let Some(EcdsaPublicKey::NistP256(point)) = good.key_data().ecdsa().cloned() else {
        panic!("not P-256")
    };
    let mut bytes = point.as_bytes().to_vec();
    bytes[64] ^= 1;
    let bad = EcdsaPublicKey::from_sec1_bytes(&bytes).unwrap();
    let text = PublicKey::new(KeyData::Ecdsa(bad), "")
        .to_openssh()
        .unwrap();
    assert_eq!(
        RegisteredKey::parse(&text, false).unwrap_err().code(),
        "public_key_unreadable"
    );
}

#[test]
fn a_fido2_only_policy_refuses_software_keys() {
    assert_eq!(
        RegisteredKey::parse(KED25519, true).unwrap_err(),
        KeyRefusal::Fido2Required
    );
}

#[test]
fn modulus_bits_counts_from_the_first_set_bit() {
    assert_eq!(modulus_bits(&[0, 0x01, 0xff]), 9);
    assert_eq!(modulus_bits(&[0x80; 384]), 3072);
    assert_eq!(modulus_bits(&[]), 0);
}
