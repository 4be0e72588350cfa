//! Follows a log file (`/var/log/auth.log`, or `sshd -E`'s file) across rotation.
//!
//! The position is (device, inode, offset) plus the last bytes before the offset. On every read
//! the follower compares that with what is at the path now:
//!
//! - **same inode, the bytes before the offset unchanged**: read on from the offset;
//! - **same inode, shorter than the offset or other bytes there** (copy-truncate: logrotate copied
//!   the file to `auth.log.1` and truncated it, and the writer may already have written again):
//!   the lines between the offset and the end of the copy are read from the copy (the sibling
//!   whose bytes before the offset are ours), then the file from its start;
//! - **another inode or no file** (rename rotation: `auth.log` became `auth.log.1`, a new
//!   `auth.log` is or will be created): the old file, still open, is read to its end; once the new
//!   file has content the follower moves to it and keeps the old one open as *draining*, read
//!   first on every later read, because writers that opened it before the rotation (rsyslog until
//!   its HUP; an `sshd -E` session monitor for its whole life) still append to it. A draining file
//!   is dropped when it is deleted or when a newer rotation pushes it out.
//!
//! The same checks run at start against the persisted position, so a rotation while the agent
//! was stopped loses nothing either: the old inode is found again among the file's siblings. A
//! partial last line is left for the next read (it is finished when its newline arrives), except
//! in a file that is done. Lines longer than [`MAX_LINE`] are skipped (sshd's are well under
//! 1 KiB).
//!
//! Wake-ups come from an inotify watch of the file's directory ([`DirWatch`]), filtered to the
//! file and its rotated siblings; there is no polling.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::spool::FilePosition;

/// Bytes read per `pread`.
const CHUNK: usize = 64 * 1024;
/// Longer lines are skipped whole.
pub const MAX_LINE: usize = CHUNK;
/// How many bytes before the offset are remembered to recognise the file.
const TAIL_LEN: usize = 64;
/// Rotated files still drained, at most (the oldest is finished and dropped past this).
const MAX_DRAINING: usize = 2;
/// Suffixes of rotated siblings that are compressed: never read.
const COMPRESSED: [&str; 5] = [".gz", ".xz", ".bz2", ".zst", ".lz4"];

/// One open file and where reading stopped in it.
#[derive(Debug)]
struct Open {
    file: File,
    dev: u64,
    inode: u64,
    offset: u64,
    tail: Vec<u8>,
    /// In the middle of an over-long line: skip to its newline.
    skipping: bool,
}

impl Open {
    fn at_start(file: File) -> io::Result<Open> {
        let meta = file.metadata()?;
        Ok(Open {
            file,
            dev: meta.dev(),
            inode: meta.ino(),
            offset: 0,
            tail: Vec::new(),
            skipping: false,
        })
    }

    fn at(file: File, position: &FilePosition) -> io::Result<Open> {
        let mut open = Open::at_start(file)?;
        open.offset = position.offset;
        open.tail = position.tail.clone();
        Ok(open)
    }

    fn position(&self) -> FilePosition {
        FilePosition {
            dev: self.dev,
            inode: self.inode,
            offset: self.offset,
            tail: self.tail.clone(),
        }
    }

    /// Whether the bytes before the offset are still the ones read there.
    fn tail_matches(&self) -> io::Result<bool> {
        tail_matches(&self.file, self.offset, &self.tail)
    }

    /// Reads complete lines from the offset into `out` until `out` holds `max`, or the end of the
    /// file. A final line without a newline is taken only when `finished` (nobody will complete
    /// it). Returns whether the end of the file was reached.
    fn read_lines(
        &mut self,
        max: usize,
        out: &mut Vec<String>,
        finished: bool,
    ) -> io::Result<bool> {
        let mut buf = vec![0u8; CHUNK];
        while out.len() < max {
            let n = read_full_at(&self.file, &mut buf, self.offset)?;
            if n == 0 {
                return Ok(true);
            }
            let chunk = &buf[..n];
            let mut start = 0;
            while out.len() < max {
                let Some(nl) = chunk[start..].iter().position(|&b| b == b'\n') else {
                    break;
                };
                let line = &chunk[start..start + nl];
                if std::mem::take(&mut self.skipping) {
                    // The end of an over-long line: dropped.
                } else {
                    out.push(String::from_utf8_lossy(line).into_owned());
                }
                self.consume(&chunk[start..=start + nl]);
                start += nl + 1;
            }
            if out.len() >= max {
                return Ok(false);
            }
            let rest = &chunk[start..];
            if rest.is_empty() {
                continue;
            }
            if start == 0 && n == CHUNK {
                // A whole chunk without a newline: an over-long line, skipped to its end.
                self.skipping = true;
                self.consume(rest);
                continue;
            }
            if n < CHUNK {
                // The end of the file, in the middle of a line.
                if finished {
                    if !std::mem::take(&mut self.skipping) {
                        out.push(String::from_utf8_lossy(rest).into_owned());
                    }
                    self.consume(rest);
                }
                return Ok(true);
            }
            // A full chunk ending mid-line: the next pread starts at that line.
        }
        Ok(false)
    }

    fn consume(&mut self, bytes: &[u8]) {
        self.offset += bytes.len() as u64;
        if bytes.len() >= TAIL_LEN {
            self.tail = bytes[bytes.len() - TAIL_LEN..].to_vec();
        } else {
            self.tail.extend_from_slice(bytes);
            let excess = self.tail.len().saturating_sub(TAIL_LEN);
            self.tail.drain(..excess);
        }
    }
}

/// `pread` until `buf` is full or the end of the file.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn tail_matches(file: &File, offset: u64, tail: &[u8]) -> io::Result<bool> {
    let len = tail.len() as u64;
    if len == 0 {
        return Ok(true);
    }
    if len > offset {
        return Ok(false);
    }
    let mut buf = vec![0u8; tail.len()];
    let n = read_full_at(file, &mut buf, offset - len)?;
    Ok(n == buf.len() && buf == tail)
}

/// The file source: the current file, and rotated files still being drained.
#[derive(Debug)]
pub struct FileFollower {
    path: PathBuf,
    current: Option<Open>,
    /// Rotated files still read, oldest first.
    draining: VecDeque<Open>,
    /// A persisted position not yet applied because the file was not there at start.
    pending: Option<Vec<FilePosition>>,
}

impl FileFollower {
    /// Follows `path` from `positions` (persisted by [`FileFollower::positions`]; empty: from the
    /// start of the current file).
    pub fn new(path: impl Into<PathBuf>, positions: Vec<FilePosition>) -> FileFollower {
        FileFollower {
            path: path.into(),
            current: None,
            draining: VecDeque::new(),
            pending: Some(positions),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where reading stopped, to persist: draining files first, the current file last.
    pub fn positions(&self) -> Vec<FilePosition> {
        if self.current.is_none()
            && self.draining.is_empty()
            && let Some(pending) = &self.pending
        {
            return pending.clone();
        }
        self.draining
            .iter()
            .chain(self.current.iter())
            .map(Open::position)
            .collect()
    }

    /// Reads up to `max` new lines, oldest first.
    pub fn read(&mut self, max: usize) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        if let Some(positions) = self.pending.take()
            && !self.resume(positions.clone())?
        {
            self.pending = Some(positions);
            return Ok(out);
        }
        self.read_draining(max, &mut out)?;
        loop {
            if out.len() >= max {
                return Ok(out);
            }
            let Some(current) = self.current.as_mut() else {
                // Nothing open yet: the file may have appeared.
                match open_if_exists(&self.path)? {
                    Some(file) => {
                        self.current = Some(Open::at_start(file)?);
                        continue;
                    }
                    None => return Ok(out),
                }
            };
            let at_path = stat_if_exists(&self.path)?;
            let same = at_path
                .as_ref()
                .is_some_and(|m| m.dev() == current.dev && m.ino() == current.inode);
            if same {
                let size = at_path.as_ref().map_or(0, MetadataExt::size);
                if size < current.offset || !current.tail_matches()? {
                    self.truncated()?;
                    self.read_draining(max, &mut out)?;
                    continue;
                }
                let Some(current) = self.current.as_mut() else {
                    return Ok(out);
                };
                current.read_lines(max, &mut out, false)?;
                return Ok(out);
            }
            // Rotated away (renamed or deleted). Read the old file on; move to the new one once
            // it has content (the writer, or one of them, has reopened the path).
            let replaced = at_path.as_ref().is_some_and(|m| m.size() > 0);
            let deleted = current.file.metadata()?.nlink() == 0;
            let at_end = current.read_lines(max, &mut out, deleted && replaced)?;
            if !(at_end && replaced) {
                return Ok(out);
            }
            let Some(file) = open_if_exists(&self.path)? else {
                continue;
            };
            let new = Open::at_start(file)?;
            tracing::info!(path = %self.path.display(), "the login log was rotated; following the new file");
            if let Some(old) = self.current.replace(new)
                && !deleted
            {
                self.push_draining(old, &mut out)?;
            }
        }
    }

    /// Reads the rotated files still open, dropping those that are done.
    fn read_draining(&mut self, max: usize, out: &mut Vec<String>) -> io::Result<()> {
        let mut keep = VecDeque::new();
        while let Some(mut old) = self.draining.pop_front() {
            if out.len() >= max {
                keep.push_back(old);
                continue;
            }
            let deleted = old.file.metadata()?.nlink() == 0;
            let at_end = old.read_lines(max, out, deleted)?;
            if !(deleted && at_end) {
                keep.push_back(old);
            }
        }
        self.draining = keep;
        Ok(())
    }

    fn push_draining(&mut self, old: Open, out: &mut Vec<String>) -> io::Result<()> {
        self.draining.push_back(old);
        while self.draining.len() > MAX_DRAINING {
            if let Some(mut oldest) = self.draining.pop_front() {
                // Finished: whatever it holds now is read, a last partial line included.
                oldest.read_lines(usize::MAX, out, true)?;
            }
        }
        Ok(())
    }

    /// The current file was truncated in place (copy-truncate): what was written after the
    /// offset before the copy is in the copy; read that first, then the file from its start.
    fn truncated(&mut self) -> io::Result<()> {
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        let copy = find_sibling(&self.path, |file, meta| {
            (meta.dev(), meta.ino()) != (current.dev, current.inode)
                && meta.size() >= current.offset
                && tail_matches(file, current.offset, &current.tail).unwrap_or(false)
        })?;
        match copy {
            Some(file) => {
                let position = current.position();
                tracing::info!(path = %self.path.display(), "the login log was truncated after a copy; reading the rest from the copy");
                let mut from_copy = Open::at(file, &position)?;
                from_copy.skipping = current.skipping;
                self.draining.push_back(from_copy);
            }
            None => tracing::warn!(
                path = %self.path.display(),
                offset = current.offset,
                "the login log was truncated and no copy of it was found: lines written since the last read may be missed"
            ),
        }
        current.offset = 0;
        current.tail.clear();
        current.skipping = false;
        Ok(())
    }

    /// Applies persisted positions: the current file if it is still at the path, rotated files
    /// found again among the siblings. Returns false when there is nothing to open yet.
    fn resume(&mut self, positions: Vec<FilePosition>) -> io::Result<bool> {
        let at_path = stat_if_exists(&self.path)?;
        let Some((last, older)) = positions.split_last() else {
            // First start: the current file from its beginning.
            return Ok(at_path.is_some());
        };
        for position in older.iter().chain(std::iter::once(last)) {
            let is_at_path = at_path
                .as_ref()
                .is_some_and(|m| (m.dev(), m.ino()) == (position.dev, position.inode));
            if is_at_path {
                if let Some(file) = open_if_exists(&self.path)? {
                    // Truncation while stopped is found by the tail check of the next read.
                    self.current = Some(Open::at(file, position)?);
                }
                continue;
            }
            let found = find_sibling(&self.path, |file, meta| {
                (meta.dev(), meta.ino()) == (position.dev, position.inode)
                    && meta.size() >= position.offset
                    && tail_matches(file, position.offset, &position.tail).unwrap_or(false)
            })?;
            match found {
                Some(file) => {
                    tracing::info!(path = %self.path.display(), "the login log was rotated while the agent was stopped; reading the rest of the old file");
                    self.draining.push_back(Open::at(file, position)?);
                }
                None => tracing::warn!(
                    path = %self.path.display(),
                    inode = position.inode,
                    "a login log the agent was reading is gone (rotated and compressed or deleted); lines after its last read position may be missed"
                ),
            }
        }
        if self.current.is_none() && at_path.is_none() && self.draining.is_empty() {
            return Ok(false);
        }
        Ok(true)
    }
}

fn stat_if_exists(path: &Path) -> io::Result<Option<std::fs::Metadata>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn open_if_exists(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `name` is `base` or one of its rotated siblings (`auth.log.1`, `auth.log-20261128`).
fn is_family(name: &OsStr, base: &OsStr) -> bool {
    let (name, base) = (name.as_bytes(), base.as_bytes());
    name.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'.' || rest[0] == b'-')
}

/// The first uncompressed rotated sibling of `path` (newest first) that `wanted` accepts.
fn find_sibling(
    path: &Path,
    wanted: impl Fn(&File, &std::fs::Metadata) -> bool,
) -> io::Result<Option<File>> {
    let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        if name == base || !is_family(&name, base) {
            continue;
        }
        let text = name.to_string_lossy();
        if COMPRESSED.iter().any(|s| text.ends_with(s)) {
            continue;
        }
        if let Ok(meta) = entry.metadata()
            && meta.is_file()
        {
            candidates.push((meta.mtime(), entry.path()));
        }
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (_, candidate) in candidates {
        let Some(file) = open_if_exists(&candidate)? else {
            continue;
        };
        let meta = file.metadata()?;
        if wanted(&file, &meta) {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

/// Wakes the reader when the log file or one of its rotated siblings changes.
#[derive(Debug)]
pub struct DirWatch {
    _watcher: RecommendedWatcher,
}

impl DirWatch {
    /// Watches the directory of `path`; every relevant change sends `()` on `wake` (a full
    /// channel already holds a wake-up, so none is lost).
    pub fn start(path: &Path, wake: mpsc::Sender<()>) -> notify::Result<DirWatch> {
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let base = path.file_name().unwrap_or_default().to_os_string();
        let mut watcher =
            notify::recommended_watcher(move |result: notify::Result<Event>| match result {
                Ok(event) => {
                    let ours = event.need_rescan()
                        || event
                            .paths
                            .iter()
                            .any(|p| p.file_name().is_some_and(|n| is_family(n, &base)));
                    if ours && !matches!(event.kind, EventKind::Access(_)) {
                        let _ = wake.try_send(());
                    }
                }
                Err(error) => tracing::warn!(%error, "login log watcher error"),
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(DirWatch { _watcher: watcher })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_partial_lines_and_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("auth.log");
        let mut f = FileFollower::new(&log, vec![]);
        assert!(f.read(10).unwrap().is_empty(), "no file yet");
        append(&log, "one\ntwo\nthr");
        assert_eq!(f.read(10).unwrap(), vec!["one", "two"]);
        assert!(f.read(10).unwrap().is_empty(), "a partial line waits");
        append(&log, "ee\nfour\n");
        assert_eq!(f.read(1).unwrap(), vec!["three"]);
        // A new follower from the saved position goes on where this one stopped.
        let mut again = FileFollower::new(&log, f.positions());
        assert_eq!(again.read(10).unwrap(), vec!["four"]);
        assert!(again.read(10).unwrap().is_empty());
    }

    #[test]
    fn over_long_lines_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("auth.log");
        append(&log, &format!("a\n{}\nb\n", "x".repeat(3 * CHUNK + 5)));
        let mut f = FileFollower::new(&log, vec![]);
        assert_eq!(f.read(10).unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn rename_rotation_drains_the_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("auth.log");
        append(&log, "1\n");
        let mut f = FileFollower::new(&log, vec![]);
        assert_eq!(f.read(10).unwrap(), vec!["1"]);
        append(&log, "2\n");
        std::fs::rename(&log, tmp.path().join("auth.log.1")).unwrap();
        // Renamed, no new file yet: the old one is read on.
        assert_eq!(f.read(10).unwrap(), vec!["2"]);
        std::fs::File::create(&log).unwrap();
        append(&tmp.path().join("auth.log.1"), "3\n");
        assert_eq!(
            f.read(10).unwrap(),
            vec!["3"],
            "an empty new file: still on the old"
        );
        append(&log, "4\n");
        assert_eq!(f.read(10).unwrap(), vec!["4"]);
        // A writer that opened the old file before the rotation still appends there.
        append(&tmp.path().join("auth.log.1"), "5\n");
        append(&log, "6\n");
        assert_eq!(f.read(10).unwrap(), vec!["5", "6"]);
        // Restarted: both positions are found again.
        append(&tmp.path().join("auth.log.1"), "7\n");
        let mut again = FileFollower::new(&log, f.positions());
        assert_eq!(again.read(10).unwrap(), vec!["7"]);
    }

    #[test]
    fn copy_truncate_reads_the_rest_from_the_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("auth.log");
        append(&log, "first line\n");
        let mut f = FileFollower::new(&log, vec![]);
        assert_eq!(f.read(10).unwrap(), vec!["first line"]);
        append(&log, "second line\n");
        std::fs::copy(&log, tmp.path().join("auth.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        // Written again past the old offset before the follower looks: the tail check sees it.
        append(&log, "third line, long enough to pass the old offset\n");
        assert_eq!(
            f.read(10).unwrap(),
            vec![
                "second line",
                "third line, long enough to pass the old offset"
            ]
        );
        append(&log, "fourth\n");
        assert_eq!(f.read(10).unwrap(), vec!["fourth"]);
    }

    #[test]
    fn rotation_while_stopped_is_caught_up() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("auth.log");
        append(&log, "1\n");
        let mut f = FileFollower::new(&log, vec![]);
        assert_eq!(f.read(10).unwrap(), vec!["1"]);
        let saved = f.positions();
        drop(f);
        append(&log, "2\n");
        std::fs::rename(&log, tmp.path().join("auth.log.1")).unwrap();
        append(&log, "3\n");
        let mut again = FileFollower::new(&log, saved);
        assert_eq!(again.read(10).unwrap(), vec!["2", "3"]);
    }

    #[test]
    fn siblings_are_recognised() {
        let base = OsStr::new("auth.log");
        for name in [
            "auth.log",
            "auth.log.1",
            "auth.log-20261128",
            "auth.log.2.gz",
        ] {
            assert!(is_family(OsStr::new(name), base), "{name}");
        }
        for name in ["auth.logx", "daemon.log", "auth", "xauth.log"] {
            assert!(!is_family(OsStr::new(name), base), "{name}");
        }
    }
}
