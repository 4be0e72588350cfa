//! Where a secret could leak in a test: the control plane's log (every crate at TRACE, captured
//! on the test's thread) and the files of its state directory (the SQLite database and its
//! journal among them). Shared by the tests that check a secret is in neither
//! (passphrase_download.rs, mfa_totp.rs): the log's subscriber is global, installed once for
//! the test binary.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use keyward_tests::ControlPlane;

thread_local! {
    /// Where this thread's log goes while a [`CapturedLog`] lives on it.
    static CAPTURE: RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { RefCell::new(None) };
}

/// Everything logged on this thread while it lives, every crate at TRACE: the control plane runs
/// in the test's (current-thread) runtime, so its tasks log on the test's thread. One global
/// subscriber for the process, which writes only on threads that capture: a scoped one
/// (`set_default`) misses a callsite another test's thread registers first (tracing caches a
/// callsite's interest).
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

/// Writes to this thread's capture, if any.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(buffer) = &*c.borrow() {
                buffer.lock().unwrap().extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    pub fn start() -> Self {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::{Layer, filter};
            // Asked at every event (a `filter_fn` would be asked once per callsite, on whichever
            // thread reaches it first).
            let capturing =
                filter::dynamic_filter_fn(|_, _| CAPTURE.with(|c| c.borrow().is_some()));
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(|| ThreadWriter)
                .with_filter(capturing);
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("no other global subscriber in the test binary");
        });
        let buffer = Arc::new(Mutex::new(Vec::new()));
        CAPTURE.with(|c| *c.borrow_mut() = Some(buffer.clone()));
        Self(buffer)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Drop for CapturedLog {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

/// Every file of the control plane's state directory (its SQLite database and journal among
/// them), whole: the passphrase must not be in any.
pub fn state_files_holding(cp: &ControlPlane, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![cp.config().server.state_dir.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}
