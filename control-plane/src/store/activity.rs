//! What the live hosts view shows of each host besides its own row: the last verified accepted
//! login and the last drift the agent repaired.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use keyward_common::HostId;
use sqlx::any::AnyRow;

use super::hosts::{IDS_PER_QUERY, placeholders};
use super::times::optional_time;
use super::{Store, StoreError, get, query_error};

/// The latest activity of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostActivity {
    /// When the last verified accepted login happened (the host's clock), and as whom. An
    /// unverified one (a log line anyone could have written) is not shown as the last login.
    pub last_login: Option<(String, String)>,
    /// When the control plane last heard of a drift the agent repaired.
    pub last_drift: Option<DateTime<Utc>>,
}

impl Store {
    /// The latest verified accepted login and repaired drift of every host that has either.
    pub async fn host_activity(&self) -> Result<HashMap<String, HostActivity>, StoreError> {
        // The newest verified accepted login per host: the (host_id, outcome, verified, at)
        // index answers both the grouping and the maximum.
        let logins = sqlx::query(
            "SELECT l.host_id, l.at, l.unix_user FROM login_events l \
             JOIN (SELECT host_id, MAX(at) AS at FROM login_events \
                   WHERE outcome = 'accepted' AND verified = 1 GROUP BY host_id) m \
             ON l.host_id = m.host_id AND l.at = m.at AND l.outcome = 'accepted' AND l.verified = 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading the last logins"))?;
        let drifts = sqlx::query(
            "SELECT host_id, MAX(received_at) AS at FROM drift_events GROUP BY host_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading the last drift events"))?;
        Self::activity_from(&logins, &drifts)
    }

    /// [`Store::host_activity`] of the hosts of `ids` alone (those without any are left out).
    pub async fn host_activity_of(
        &self,
        ids: &[HostId],
    ) -> Result<HashMap<String, HostActivity>, StoreError> {
        let mut activity = HashMap::new();
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let list = placeholders(chunk.len());
            let logins_sql = format!(
                "SELECT l.host_id, l.at, l.unix_user FROM login_events l \
                 JOIN (SELECT host_id, MAX(at) AS at FROM login_events \
                       WHERE outcome = 'accepted' AND verified = 1 AND host_id IN ({list}) \
                       GROUP BY host_id) m \
                 ON l.host_id = m.host_id AND l.at = m.at AND l.outcome = 'accepted' AND l.verified = 1"
            );
            let drifts_sql = format!(
                "SELECT host_id, MAX(received_at) AS at FROM drift_events \
                 WHERE host_id IN ({list}) GROUP BY host_id"
            );
            let (mut logins, mut drifts) = (sqlx::query(&logins_sql), sqlx::query(&drifts_sql));
            for id in chunk {
                logins = logins.bind(id.as_str());
                drifts = drifts.bind(id.as_str());
            }
            let logins = logins
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("reading the last logins"))?;
            let drifts = drifts
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("reading the last drift events"))?;
            activity.extend(Self::activity_from(&logins, &drifts)?);
        }
        Ok(activity)
    }

    fn activity_from(
        logins: &[AnyRow],
        drifts: &[AnyRow],
    ) -> Result<HashMap<String, HostActivity>, StoreError> {
        let mut activity: HashMap<String, HostActivity> = HashMap::new();
        for row in logins {
            let host: String = get(row, "host_id")?;
            activity.entry(host).or_default().last_login =
                Some((get(row, "at")?, get(row, "unix_user")?));
        }
        for row in drifts {
            let host: String = get(row, "host_id")?;
            activity.entry(host).or_default().last_drift = optional_time(row, "at")?;
        }
        Ok(activity)
    }
}
