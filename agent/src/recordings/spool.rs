//! The recorder's files in the spool: their names, reading them in whole, checked lines, and
//! giving their disk space back once the control plane holds what they said.
//!
//! The wrapper names each file `{started_ms}-{pid}-{o|i}-{client_port}-{client_ip}.jsonl`
//! (`i`: keystrokes are recorded). Only `tlog-rec-session` (set-user-ID to the recorder's user)
//! can write into the spool, but a user who runs it by hand chooses the file name and what the
//! session shows, never tlog's own fields: every message carries the `user` tlog took from the
//! kernel, which [`check_lines`] holds to one managed user and one recording id per file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{FallocateFlags, fallocate};
use serde::Deserialize;

use super::recorder::TLOG_REC_SESSION;

/// Bytes of tlog messages per chunk at most (the protocol's bound).
pub const CHUNK_MAX: usize = 256 * 1024;
/// A tlog message longer than this is not tlog's (its payload default is 2 KiB, 6x escaped).
pub const LINE_MAX: usize = 64 * 1024;

/// What a recording file's name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolName {
    /// `{started_ms}-{pid}`: unique on the host, and the protocol's recording id.
    pub id: String,
    pub started_ms: i64,
    /// The recorder's process id (the wrapper `exec`s it).
    pub pid: i32,
    pub input: bool,
    pub source_port: u16,
    /// `None` when sshd gave no connection (`unknown`).
    pub source_ip: Option<IpAddr>,
}

impl SpoolName {
    /// Parses a file name; `None` for anything the wrapper does not write.
    pub fn parse(name: &str) -> Option<SpoolName> {
        let stem = name.strip_suffix(".jsonl")?;
        let mut parts = stem.splitn(5, '-');
        let started = parts.next()?;
        let pid = parts.next()?;
        let io = parts.next()?;
        let port = parts.next()?;
        let ip = parts.next()?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(started) || !digits(pid) {
            return None;
        }
        let input = match io {
            "i" => true,
            "o" => false,
            _ => return None,
        };
        let source_ip = match ip {
            "unknown" => None,
            ip => Some(ip.parse().ok()?),
        };
        Some(SpoolName {
            id: format!("{started}-{pid}"),
            started_ms: started.parse().ok()?,
            pid: pid.parse().ok().filter(|p| *p > 0)?,
            input,
            source_port: port.parse().ok()?,
            source_ip,
        })
    }
}

/// The fields of a tlog message the agent checks.
#[derive(Debug, Deserialize)]
struct Message {
    user: String,
    rec: String,
    #[serde(default)]
    time: Option<f64>,
}

/// Who a recording is of, from its first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub user: String,
    pub rec: String,
}

/// What [`check_lines`] found: how many bytes of the input are good lines, and the time of the
/// last message (Unix seconds) when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub good: usize,
    pub last_time: Option<f64>,
    /// A line that is not a message of `owner`'s recording stopped the check at `good`.
    pub bad: Option<String>,
}

/// The owner of a recording from its first line, when that line is whole and a tlog message.
pub fn first_owner(file: &mut File) -> Option<Owner> {
    let (data, _) = read_lines(file, 0).ok()?;
    let end = data.iter().position(|&b| b == b'\n')?;
    let mut owner = None;
    let checked = check_lines(&data[..=end], &mut owner);
    checked.bad.is_none().then_some(owner)?
}

/// Checks whole lines (`data` ends at a line end): each is a tlog message of one user and one
/// recording id, the first line's (`owner` is set from it when `None`).
pub fn check_lines(data: &[u8], owner: &mut Option<Owner>) -> Checked {
    let mut good = 0;
    let mut last_time = None;
    for line in data.split_inclusive(|&b| b == b'\n') {
        let bad = |why: &str| Checked {
            good,
            last_time,
            bad: Some(why.to_owned()),
        };
        if line.len() > LINE_MAX || !line.ends_with(b"\n") {
            return bad("a line over 64 KiB or without its end");
        }
        let Ok(message) = serde_json::from_slice::<Message>(line) else {
            return bad("a line that is not a tlog message");
        };
        match owner {
            None => {
                *owner = Some(Owner {
                    user: message.user,
                    rec: message.rec,
                });
            }
            Some(o) if o.user != message.user || o.rec != message.rec => {
                return bad("a message of another user or recording");
            }
            Some(_) => {}
        }
        last_time = message.time.or(last_time);
        good += line.len();
    }
    Checked {
        good,
        last_time,
        bad: None,
    }
}

/// Opens a recording file for reading and punching: a regular file of `owner_uid`, never
/// through a link.
pub fn open(path: &Path, owner_uid: u32) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != owner_uid {
        return Err(std::io::Error::other(
            "not a regular file of the recorder's user",
        ));
    }
    Ok(file)
}

/// Reads whole lines from `from`: at most [`CHUNK_MAX`] bytes, ending at the last `'\n'` read.
/// Returns the bytes (empty when no whole line is there yet) and the file's size.
pub fn read_lines(file: &mut File, from: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let size = file.metadata()?.len();
    if from >= size {
        return Ok((Vec::new(), size));
    }
    file.seek(SeekFrom::Start(from))?;
    let mut data = Vec::with_capacity(CHUNK_MAX.min((size - from) as usize));
    file.take(CHUNK_MAX as u64).read_to_end(&mut data)?;
    match data.iter().rposition(|&b| b == b'\n') {
        Some(end) => data.truncate(end + 1),
        None => data.clear(),
    }
    Ok((data, size))
}

/// Reads `[start, end)` again (a chunk sent and not yet acknowledged).
pub fn read_range(file: &mut File, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(start))?;
    let mut data = Vec::with_capacity((end - start) as usize);
    file.take(end - start).read_to_end(&mut data)?;
    if data.len() as u64 != end - start {
        return Err(std::io::Error::other(
            "the recording file is shorter than what was sent",
        ));
    }
    Ok(data)
}

/// The first `'\n'` at or after `from`, plus one: where whole lines start again after a skip.
pub fn next_line_start(file: &mut File, from: u64) -> std::io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(from))?;
    let mut buf = [0u8; 8192];
    let mut at = from;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
            return Ok(Some(at + i as u64 + 1));
        }
        at += n as u64;
    }
}

/// Gives back the disk space of `[0, upto)` (the control plane holds it), keeping the size and
/// offsets the recorder appends at.
pub fn punch(file: &File, upto: u64) {
    punch_range(file, 0, upto);
}

/// Gives back the disk space of `[start, end)`, keeping the file's size.
pub fn punch_range(file: &File, start: u64, end: u64) {
    if end <= start {
        return;
    }
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let (Ok(offset), Ok(len)) = (i64::try_from(start), i64::try_from(end - start)) else {
        return;
    };
    if let Err(error) = fallocate(file, flags, offset, len) {
        tracing::debug!(%error, "cannot free a recording's bytes");
    }
}

/// The disk space a file takes.
pub fn allocated(meta: &std::fs::Metadata) -> u64 {
    meta.blocks() * 512
}

/// Whether the recorder `pid` still runs (a process of that id running another program is a
/// reused id: the recorder is gone).
pub fn recorder_alive(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|exe| exe == Path::new(TLOG_REC_SESSION))
}

/// The user who started the recorder `pid` while it runs: its real user id (the recorder is
/// set-user-ID to its own user; the real id stays whoever ran it, which the kernel sets, not the
/// user). `None` when `pid` is not a running recorder or its user has no name.
pub fn recorder_runner(pid: i32) -> Option<String> {
    if !recorder_alive(pid) {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let real: u32 = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(real)).ok()??;
    // Checked again: an id reused between the two reads is not the recorder's.
    recorder_alive(pid).then_some(user.name)
}

/// Whether the recorder `pid` runs without an audit session id, where tlog records only one
/// session at a time (module docs of [`super`]).
pub fn without_audit_session(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/sessionid"))
        .is_ok_and(|id| id.trim() == "4294967295")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE_A: &str =
        "{\"ver\":\"2.3\",\"user\":\"kwadmin\",\"rec\":\"r1\",\"id\":1,\"time\":10.5}\n";
    const LINE_B: &str =
        "{\"ver\":\"2.3\",\"user\":\"kwadmin\",\"rec\":\"r1\",\"id\":2,\"time\":11.0}\n";
    const OTHER_USER: &str = "{\"ver\":\"2.3\",\"user\":\"tenant\",\"rec\":\"r1\",\"id\":3}\n";

    #[test]
    fn names_the_wrapper_writes_parse_and_nothing_else_does() {
        let name = SpoolName::parse("1796645771222-4242-o-51234-127.0.0.1.jsonl").unwrap();
        assert_eq!(name.id, "1796645771222-4242");
        assert_eq!(name.pid, 4242);
        assert!(!name.input);
        assert_eq!(name.source_port, 51234);
        assert_eq!(name.source_ip, Some("127.0.0.1".parse().unwrap()));
        let v6 = SpoolName::parse("1-2-i-22-::1.jsonl").unwrap();
        assert!(v6.input);
        assert_eq!(v6.source_ip, Some("::1".parse().unwrap()));
        assert_eq!(
            SpoolName::parse("1-2-o-0-unknown.jsonl").unwrap().source_ip,
            None
        );
        for bad in [
            "1-2-o-22-127.0.0.1",
            "x-2-o-22-127.0.0.1.jsonl",
            "1-0-o-22-127.0.0.1.jsonl",
            "1-2-x-22-127.0.0.1.jsonl",
            "1-2-o-99999-127.0.0.1.jsonl",
            "1-2-o-22-not.an.ip.jsonl",
            "../1-2-o-22-127.0.0.1.jsonl",
        ] {
            assert_eq!(SpoolName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn lines_hold_to_one_user_and_one_recording() {
        let mut owner = None;
        let data = format!("{LINE_A}{LINE_B}");
        let checked = check_lines(data.as_bytes(), &mut owner);
        assert_eq!(checked.good, data.len());
        assert_eq!(checked.bad, None);
        assert_eq!(checked.last_time, Some(11.0));
        assert_eq!(owner.as_ref().unwrap().user, "kwadmin");

        let data = format!("{LINE_A}{OTHER_USER}{LINE_B}");
        let checked = check_lines(data.as_bytes(), &mut owner);
        assert_eq!(checked.good, LINE_A.len());
        assert!(checked.bad.is_some());

        let data = format!("{LINE_A}not json\n");
        assert_eq!(check_lines(data.as_bytes(), &mut owner).good, LINE_A.len());
    }

    #[test]
    fn only_whole_lines_are_read_and_shipped_bytes_are_freed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, format!("{LINE_A}{LINE_B}{{\"partial")).unwrap();
        let mut file = open(&path, nix::unistd::geteuid().as_raw()).unwrap();
        let (data, size) = read_lines(&mut file, 0).unwrap();
        assert_eq!(data, format!("{LINE_A}{LINE_B}").as_bytes());
        assert_eq!(size, (LINE_A.len() + LINE_B.len() + 9) as u64);
        let (rest, _) = read_lines(&mut file, data.len() as u64).unwrap();
        assert!(rest.is_empty());
        assert_eq!(
            read_range(&mut file, LINE_A.len() as u64, data.len() as u64).unwrap(),
            LINE_B.as_bytes()
        );
        assert_eq!(
            next_line_start(&mut file, 3).unwrap(),
            Some(LINE_A.len() as u64)
        );
        punch(&file, LINE_A.len() as u64);
        assert_eq!(file.metadata().unwrap().len(), size, "the size is kept");
        let (again, _) = read_lines(&mut file, LINE_A.len() as u64).unwrap();
        assert_eq!(again, LINE_B.as_bytes());
    }

    #[test]
    fn a_link_or_another_owners_file_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, LINE_A).unwrap();
        let link = dir.path().join("l.jsonl");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert!(open(&link, me).is_err());
        assert!(open(&path, me + 1).is_err());
        assert!(open(&path, me).is_ok());
    }
}
