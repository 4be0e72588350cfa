//! The key generation and rotate-all benchmarks' smoke modes still run end to end: ssh-keygen
//! and keyward's RSA-4096 generator side by side, and a bulk RSA-4096 rotation over a real
//! OpenBao (`make test-deps` installs it; `KEYWARD_BAO` names another binary). Timings are not
//! checked: these are benchmarks, kept working by the test suite.

#![allow(clippy::unwrap_used)]

use keyward_bench::{keygen, rotate_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_smoke_makes_one_key_with_each_generator() {
    let result = keygen::run(&keygen::Options::smoke()).await.unwrap();
    for name in [keygen::SSH_KEYGEN, keygen::KEYWARD, keygen::PREVIOUS] {
        let generator = result.generator(name).unwrap();
        assert_eq!(generator.seconds.len(), 1, "{name}");
        assert!(generator.seconds[0] > 0.0, "{name}");
    }
    let ratio = result.ratio(keygen::KEYWARD).unwrap();
    assert!(ratio.throughput > 0.0 && ratio.low <= ratio.high);
    let table = keygen::markdown(&result);
    assert!(table.contains("| keyward (rsa 0.10) | 1 |"), "{table}");
    assert!(table.contains("keygen --smoke"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_all_smoke_rotates_every_tenant() {
    let result = rotate_all::run(&rotate_all::Options::smoke())
        .await
        .unwrap();
    assert_eq!((result.ssh.rotated, result.ssh.failed), (2, 0));
    assert_eq!(result.pure_keys, 4);
    assert_eq!(result.rotate_rsa.len(), 1);
    assert_eq!(result.rotate_ed25519.len(), 1);
    assert!(result.share() > 0.0);
    let table = rotate_all::markdown(&result);
    assert!(
        table.contains("rotate-all `ssh`, 4 RSA-4096 key sets"),
        "{table}"
    );
    assert!(table.contains("rotate-all --smoke"), "{table}");
}
