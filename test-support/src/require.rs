//! A test that needs a program or root fails loudly with how to get it; it never skips.

use std::path::{Path, PathBuf};

/// Panics with an install hint unless `program` (an absolute path) exists.
pub fn require(program: &str, package: &str) {
    assert!(
        Path::new(program).exists(),
        "{program} is missing; install it with `apt-get install -y {package}`"
    );
}

/// Finds a program on PATH or fails the test with how to install it.
pub fn require_program(name: &str, install_hint: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| panic!("{name} is not installed: {install_hint}"))
}

/// Panics unless running as root (the tests create users and chown files).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create Unix users and must run as root, as the agent does"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_on_path_is_found() {
        assert!(require_program("sh", "apt-get install -y dash").is_file());
        require("/bin/sh", "dash");
    }

    #[test]
    #[should_panic(expected = "apt-get install -y kw-nothing")]
    fn a_missing_program_fails_with_the_install_hint() {
        require("/nonexistent/kw-nothing", "kw-nothing");
    }

    #[test]
    #[should_panic(expected = "kw-nothing is not installed: apt-get install -y kw-nothing")]
    fn a_program_missing_from_path_fails_with_the_install_hint() {
        require_program("kw-nothing", "apt-get install -y kw-nothing");
    }
}
