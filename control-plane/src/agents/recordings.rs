//! SSH session recordings from agents: each chunk checked, stored once in the object store, its
//! metadata in SQL, and acknowledged only once stored (the agent keeps a chunk until then and
//! sends it again after a reconnect).
//!
//! What a rooted host can send is bounded (THREATS.md, adversary 2):
//!
//! | what | bound | over it |
//! |---|---|---|
//! | `recording_id` | `[0-9a-z-]{1,64}` | **refused** (`invalid_argument`, the stream ends) |
//! | `user` | one of the host's two managed users | refused |
//! | `source_ip` / `source_port` | an IP address / at most 65535 | refused |
//! | `started_at` / `ended_at` (last chunk) | RFC 3339 | refused |
//! | `data` | 256 KiB of whole `\n`-terminated lines, each a JSON object | refused |
//! | `seq` | the next chunk (or one already stored: acknowledged again, not stored twice) | a gap is refused |
//! | open recordings per host | `[recordings] max_open_per_host` (64) | a new one is refused (`resource_exhausted`) |
//! | bytes per recording | `[recordings] max_bytes` (256 MiB) | acknowledged, not kept, counted in `droppedBytes`; the recording is `truncated` |
//! | chunks per host | `[recordings] chunks_per_minute` / `chunks_burst` | the stream waits (back-pressure), nothing is lost |
//!
//! A completed recording's SHA-256 goes into the hash-chained audit log
//! (`session.recording.completed`), so that a recording changed in the object store afterwards
//! no longer matches the chain.

use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use keyward_common::proto::RecordingChunk;
use keyward_common::{HostId, KeyKind, TenantId};
use rand::RngCore;
use serde_json::json;

use crate::caller::Caller;
use crate::clock::{iso8601, parse_iso8601};
use crate::lifecycle::{DomainError, KeyLifecycle};
use crate::recordings::{ArchiveError, RecordingArchive, RecordingName};
use crate::store::{ChunkTally, Completion, NewRecording, RecordingRecord, StoreError};

/// The most `data` one chunk carries.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// The audit action of a completed recording; its detail names the recording (`recordingId`),
/// its host, user, size and SHA-256.
pub const AUDIT_ACTION: &str = "session.recording.completed";
/// How much later than a session's start its login event may be dated (the two clocks are the
/// host's, but sshd logs the login as it accepts it and the recorder starts a moment after).
const LOGIN_SLACK: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// Why a chunk is refused: the stream ends with `invalid_argument` (or `resource_exhausted`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkRefused {
    #[error("recording_id: a recording id is 1 to 64 of [0-9a-z-]")]
    BadId,
    #[error("recording {id}: user is not a managed user of the host")]
    NotManagedUser { id: String },
    #[error("recording {id}: {field} is invalid")]
    BadField { id: String, field: &'static str },
    #[error("recording {id}: data is over {MAX_CHUNK_BYTES} bytes")]
    TooLarge { id: String },
    #[error("recording {id}: data is not whole JSON lines")]
    NotLines { id: String },
    #[error("recording {id}: chunk {seq} after {next} chunks (a gap)")]
    Gap { id: String, seq: u64, next: u64 },
    #[error("recording {id}: chunk {seq} after its last chunk")]
    AfterLast { id: String, seq: u64 },
    #[error("recording {id}: its user or source changed")]
    Mismatch { id: String },
    #[error("recording {id}: the host has {max} recordings open")]
    TooManyOpen { id: String, max: u32 },
}

/// Why a chunk could not be stored now (it is not acknowledged; the agent sends it again).
#[derive(Debug, thiserror::Error)]
pub enum ChunkNotStored {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Domain(#[from] DomainError),
}

/// A chunk as checked: nothing in it is out of shape.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedChunk {
    pub name: RecordingName,
    pub seq: u64,
    pub user_kind: KeyKind,
    pub user: String,
    pub source_ip: IpAddr,
    pub source_port: u16,
    pub started_at: DateTime<Utc>,
    /// `Some` on the last chunk.
    pub ended_at: Option<DateTime<Utc>>,
    pub dropped_bytes: u64,
    pub input: bool,
}

/// Checks a chunk against the host's managed users (`admin`, `tenant`).
pub fn check_chunk(
    chunk: &RecordingChunk,
    admin_user: &str,
    tenant_user: &str,
) -> Result<CheckedChunk, ChunkRefused> {
    let name = RecordingName::from_str(&chunk.recording_id).map_err(|_| ChunkRefused::BadId)?;
    let id = || name.as_str().to_owned();
    let bad = |field| ChunkRefused::BadField { id: id(), field };
    let user_kind = if chunk.user == admin_user {
        KeyKind::Admin
    } else if chunk.user == tenant_user {
        KeyKind::Tenant
    } else {
        return Err(ChunkRefused::NotManagedUser { id: id() });
    };
    let source_ip = (chunk.source_ip.len() <= 64)
        .then(|| chunk.source_ip.parse::<IpAddr>().ok())
        .flatten()
        .ok_or_else(|| bad("source_ip"))?;
    let source_port = u16::try_from(chunk.source_port).map_err(|_| bad("source_port"))?;
    let time = |raw: &str, field| {
        (raw.len() <= 64)
            .then(|| parse_iso8601(raw))
            .flatten()
            .ok_or_else(|| bad(field))
    };
    let started_at = time(&chunk.started_at, "started_at")?;
    let ended_at = chunk
        .last
        .then(|| time(&chunk.ended_at, "ended_at"))
        .transpose()?;
    if chunk.data.len() > MAX_CHUNK_BYTES {
        return Err(ChunkRefused::TooLarge { id: id() });
    }
    if !whole_json_lines(&chunk.data) {
        return Err(ChunkRefused::NotLines { id: id() });
    }
    Ok(CheckedChunk {
        seq: chunk.seq,
        user_kind,
        user: chunk.user.clone(),
        source_ip,
        source_port,
        started_at,
        ended_at,
        dropped_bytes: chunk.dropped_bytes,
        input: chunk.input,
        name,
    })
}

/// `data` is whole lines, each ending with `\n` and each a JSON object (tlog's messages).
fn whole_json_lines(data: &[u8]) -> bool {
    if data.is_empty() {
        return true;
    }
    if data.last() != Some(&b'\n') {
        return false;
    }
    data[..data.len() - 1].split(|b| *b == b'\n').all(|line| {
        line.first() == Some(&b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok()
    })
}

/// The recordings' side of the agents' endpoint: where chunks go and how much a host may keep.
#[derive(Debug, Clone)]
pub struct RecordingIngest {
    pub archive: RecordingArchive,
    /// `[recordings] max_bytes`.
    pub max_bytes: u64,
    /// `[recordings] max_open_per_host`.
    pub max_open_per_host: u32,
}

/// What becomes of a chunk that was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored now (or kept out past `max_bytes`, and counted).
    New,
    /// Stored before: acknowledged again.
    Again,
}

fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("rec_{}", hex::encode(bytes))
}

impl RecordingIngest {
    /// Takes one chunk of `host`'s agent. `Ok` means it may be acknowledged.
    pub async fn ingest(
        &self,
        lifecycle: &KeyLifecycle,
        host: &HostId,
        tenant: &TenantId,
        chunk: RecordingChunk,
    ) -> Result<Result<Stored, ChunkNotStored>, ChunkRefused> {
        let store = lifecycle.store();
        let record = match store.tenant(tenant).await {
            Ok(Some(t)) => t,
            Ok(None) => return Err(ChunkRefused::NotManagedUser { id: String::new() }),
            Err(e) => return Ok(Err(e.into())),
        };
        let checked = check_chunk(
            &chunk,
            record.admin_user.as_str(),
            record.tenant_user.as_str(),
        )?;
        let existing = match store.recording_of_agent(host, checked.name.as_str()).await {
            Ok(existing) => existing,
            Err(e) => return Ok(Err(e.into())),
        };
        let recording = match existing {
            Some(r) => r,
            None => {
                if checked.seq != 0 {
                    return Err(ChunkRefused::Gap {
                        id: checked.name.as_str().to_owned(),
                        seq: checked.seq,
                        next: 0,
                    });
                }
                match self.start(lifecycle, host, tenant, &checked).await? {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(e)),
                }
            }
        };
        self.take(lifecycle, &recording, &checked, chunk.data).await
    }

    /// The recording's row for its first chunk.
    async fn start(
        &self,
        lifecycle: &KeyLifecycle,
        host: &HostId,
        tenant: &TenantId,
        checked: &CheckedChunk,
    ) -> Result<Result<RecordingRecord, ChunkNotStored>, ChunkRefused> {
        let store = lifecycle.store();
        let open = match store.open_recordings(host).await {
            Ok(n) => n,
            Err(e) => return Ok(Err(e.into())),
        };
        if open >= i64::from(self.max_open_per_host) {
            return Err(ChunkRefused::TooManyOpen {
                id: checked.name.as_str().to_owned(),
                max: self.max_open_per_host,
            });
        }
        let new = NewRecording {
            id: new_id(),
            host_id: host.clone(),
            recording_id: checked.name.as_str().to_owned(),
            tenant_id: tenant.clone(),
            user: checked.user.clone(),
            user_kind: checked.user_kind.as_str(),
            source_ip: checked.source_ip.to_string(),
            source_port: i64::from(checked.source_port),
            started_at: checked.started_at,
            received_at: lifecycle.now(),
            input_recorded: checked.input,
        };
        match store.insert_recording(&new).await {
            // Another stream of the host (a reconnection) started it first.
            Ok(()) | Err(StoreError::Duplicate { .. }) => {}
            Err(e) => return Ok(Err(e.into())),
        }
        let recording = match store.recording_of_agent(host, checked.name.as_str()).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Ok(Err(
                    StoreError::Misuse("a recording just started is gone").into()
                ));
            }
            Err(e) => return Ok(Err(e.into())),
        };
        attach_login(lifecycle, &recording).await;
        Ok(Ok(recording))
    }

    /// Stores the chunk of a recording that has a row.
    async fn take(
        &self,
        lifecycle: &KeyLifecycle,
        recording: &RecordingRecord,
        checked: &CheckedChunk,
        data: Vec<u8>,
    ) -> Result<Result<Stored, ChunkNotStored>, ChunkRefused> {
        let id = || checked.name.as_str().to_owned();
        let next = u64::try_from(recording.chunks).unwrap_or(0);
        if recording.user != checked.user
            || recording.source_ip != checked.source_ip.to_string()
            || recording.source_port != i64::from(checked.source_port)
        {
            return Err(ChunkRefused::Mismatch { id: id() });
        }
        if checked.seq < next {
            // The last chunk again, of a recording whose completion failed after the chunk was
            // stored (the audit log could not be written): complete it now.
            if let Some(ended_at) = checked.ended_at
                && recording.state == "open"
                && checked.seq + 1 == next
            {
                let completed = self.complete(lifecycle, recording, checked, ended_at).await;
                return Ok(completed.map(|()| Stored::Again));
            }
            return Ok(Ok(Stored::Again));
        }
        if recording.state != "open" {
            return Err(ChunkRefused::AfterLast {
                id: id(),
                seq: checked.seq,
            });
        }
        if checked.seq > next {
            return Err(ChunkRefused::Gap {
                id: id(),
                seq: checked.seq,
                next,
            });
        }
        Ok(self.store_chunk(lifecycle, recording, checked, data).await)
    }

    async fn store_chunk(
        &self,
        lifecycle: &KeyLifecycle,
        recording: &RecordingRecord,
        checked: &CheckedChunk,
        data: Vec<u8>,
    ) -> Result<Stored, ChunkNotStored> {
        let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
        let kept = u64::try_from(recording.size_bytes).unwrap_or(0) + data.len() as u64;
        let keep = kept <= self.max_bytes;
        if keep && !data.is_empty() {
            self.archive
                .put_chunk(&recording.host_id, &checked.name, checked.seq, data)
                .await?;
        }
        let agent_dropped = i64::try_from(checked.dropped_bytes).unwrap_or(i64::MAX);
        let tally = ChunkTally {
            seq: i64::try_from(checked.seq).unwrap_or(i64::MAX),
            kept_bytes: if keep { len } else { 0 },
            dropped_bytes: agent_dropped.saturating_add(if keep { 0 } else { len }),
            truncated: !keep,
        };
        let store = lifecycle.store();
        if !store.advance_recording(&recording.id, tally).await? {
            // Another stream of the host stored it first.
            return Ok(Stored::Again);
        }
        if let Some(ended_at) = checked.ended_at {
            self.complete(lifecycle, recording, checked, ended_at)
                .await?;
        }
        Ok(Stored::New)
    }

    /// The last chunk is stored: the recording's hash goes into the audit chain.
    async fn complete(
        &self,
        lifecycle: &KeyLifecycle,
        recording: &RecordingRecord,
        checked: &CheckedChunk,
        ended_at: DateTime<Utc>,
    ) -> Result<(), ChunkNotStored> {
        let (sha256, size) = self
            .archive
            .sha256(&recording.host_id, &checked.name, checked.seq + 1)
            .await?;
        attach_login(lifecycle, recording).await;
        let store = lifecycle.store();
        let latest = store.recording(&recording.id).await?;
        let latest = latest.as_ref().unwrap_or(recording);
        let completion = Completion { ended_at, sha256 };
        let id = recording.id.clone();
        let detail = json!({
            "recordingId": recording.id,
            "hostId": recording.host_id,
            "agentRecordingId": recording.recording_id,
            "user": recording.user,
            "userKind": recording.user_kind,
            "startedAt": iso8601(recording.started_at),
            "endedAt": iso8601(ended_at),
            "sizeBytes": size,
            "sha256": completion.sha256,
            "droppedBytes": latest.dropped_bytes,
            "truncated": latest.truncated,
            "loginId": latest.login_id,
            "fingerprint": latest.fingerprint,
            "certificateId": latest.certificate_id,
        });
        let completed = lifecycle
            .audited(
                &Caller::system(),
                AUDIT_ACTION,
                Some(&recording.tenant_id),
                move |tx| {
                    Box::pin(async move {
                        if !tx.complete_recording(&id, &completion).await? {
                            // Another stream completed it first: no second event.
                            return Err(DomainError::ConcurrentModification);
                        }
                        Ok(((), detail))
                    })
                },
            )
            .await;
        match completed {
            Ok(()) | Err(DomainError::ConcurrentModification) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Ties a recording to its login event, when one is stored (best effort: the login's batch may
/// arrive after the recording's first chunk, so this is tried again at its end).
async fn attach_login(lifecycle: &KeyLifecycle, recording: &RecordingRecord) {
    if recording.login_id.is_some() {
        return;
    }
    let store = lifecycle.store();
    let found = store
        .login_of_session(
            &recording.host_id,
            &recording.user,
            &recording.source_ip,
            recording.source_port,
            recording.started_at + LOGIN_SLACK,
        )
        .await;
    match found {
        Ok(Some(login)) => {
            if let Err(e) = store.attach_login(&recording.id, &login).await {
                tracing::warn!(recording = %recording.id, error = %e, "cannot tie a recording to its login");
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(recording = %recording.id, error = %e, "cannot find a recording's login");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk() -> RecordingChunk {
        RecordingChunk {
            recording_id: "r-1".into(),
            seq: 0,
            user: "kwadmin".into(),
            source_ip: "192.0.2.7".into(),
            source_port: 52000,
            started_at: "2026-12-07T10:00:00Z".into(),
            data: b"{\"id\":1}\n{\"id\":2}\n".to_vec(),
            last: false,
            ended_at: String::new(),
            dropped_bytes: 0,
            input: false,
        }
    }

    fn check(c: &RecordingChunk) -> Result<CheckedChunk, ChunkRefused> {
        check_chunk(c, "kwadmin", "kwtenant")
    }

    #[test]
    fn a_good_chunk_passes_with_its_user_kind() {
        let ok = check(&chunk()).expect("valid");
        assert_eq!(ok.user_kind, KeyKind::Admin);
        assert_eq!(ok.source_port, 52000);
        assert_eq!(ok.ended_at, None);
        let tenant = check(&RecordingChunk {
            user: "kwtenant".into(),
            last: true,
            ended_at: "2026-12-07T10:05:00Z".into(),
            data: Vec::new(),
            ..chunk()
        })
        .expect("valid");
        assert_eq!(tenant.user_kind, KeyKind::Tenant);
        assert!(tenant.ended_at.is_some());
    }

    #[test]
    fn every_bad_field_is_refused() {
        let refused = |c: RecordingChunk| check(&c).expect_err("refused");
        assert_eq!(
            refused(RecordingChunk {
                recording_id: "../x".into(),
                ..chunk()
            }),
            ChunkRefused::BadId
        );
        assert_eq!(
            refused(RecordingChunk {
                recording_id: "R1".into(),
                ..chunk()
            }),
            ChunkRefused::BadId
        );
        assert!(matches!(
            refused(RecordingChunk {
                user: "root".into(),
                ..chunk()
            }),
            ChunkRefused::NotManagedUser { .. }
        ));
        assert!(matches!(
            refused(RecordingChunk {
                source_ip: "nowhere".into(),
                ..chunk()
            }),
            ChunkRefused::BadField {
                field: "source_ip",
                ..
            }
        ));
        assert!(matches!(
            refused(RecordingChunk {
                source_port: 70000,
                ..chunk()
            }),
            ChunkRefused::BadField {
                field: "source_port",
                ..
            }
        ));
        assert!(matches!(
            refused(RecordingChunk {
                started_at: "yesterday".into(),
                ..chunk()
            }),
            ChunkRefused::BadField {
                field: "started_at",
                ..
            }
        ));
        assert!(matches!(
            refused(RecordingChunk {
                last: true,
                ..chunk()
            }),
            ChunkRefused::BadField {
                field: "ended_at",
                ..
            }
        ));
        let mut big = b"{\"a\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_CHUNK_BYTES));
        big.extend_from_slice(b"\"}\n");
        assert!(matches!(
            refused(RecordingChunk {
                data: big,
                ..chunk()
            }),
            ChunkRefused::TooLarge { .. }
        ));
        for data in [
            &b"{\"id\":1}"[..],
            b"{\"id\":1}\nnot json\n",
            b"\n",
            b"[1]\n",
            b"{\"id\":1}\n\n",
        ] {
            assert!(
                matches!(
                    refused(RecordingChunk {
                        data: data.to_vec(),
                        ..chunk()
                    }),
                    ChunkRefused::NotLines { .. }
                ),
                "{data:?}"
            );
        }
    }

    #[test]
    fn ids_are_random_and_well_formed() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(a.starts_with("rec_") && a.len() == 36);
    }
}
