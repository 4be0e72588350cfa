//! The query of `GET /api/v1/admin/hosts`: its filters, its orders and the page it picks. The
//! hosts are few enough (tens of thousands) to be read, filtered and sorted in memory on each
//! call; what is sorted is the live view (`connected` and `status` are not columns).

use std::cmp::Ordering;

use keyward_common::HostId;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::hosts::HostView;
use crate::error::ApiError;

/// `GET /api/v1/admin/hosts` query: a page of hosts, filtered and sorted.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HostsQuery {
    /// 1 to 500; 100 when any parameter is given. Without any parameter the answer is every host
    /// (the former call, kept for older clients).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `X-Next-Cursor` of the previous page: the hosts after this host id. Only with the
    /// default `sort` (`hostId`); page other orders with `offset`.
    #[param(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$")]
    pub cursor: Option<String>,
    /// Hosts skipped (0 to 1,000,000); not with `cursor`.
    #[param(minimum = 0, maximum = 1_000_000)]
    pub offset: Option<u32>,
    /// Only this tenant's hosts.
    #[param(pattern = r"^[a-z0-9][a-z0-9-]{0,62}$")]
    pub tenant: Option<String>,
    /// Only hosts in this status.
    #[param(inline)]
    pub status: Option<HostStatus>,
    /// Only hosts with (true) or without (false) a live agent stream.
    pub connected: Option<bool>,
    /// Host ids or tenant ids containing this text (1 to 64 characters).
    #[param(min_length = 1, max_length = 64)]
    pub q: Option<String>,
    /// The order: `hostId` (the default), `tenantId`, `status` (by its name: `applying`,
    /// `degraded`, `in_sync`, `pending`, `revoked`) or `lastSeen` (never seen first), ascending;
    /// with a leading `-`, descending. Hosts that tie are in host id order.
    #[param(inline)]
    pub sort: Option<HostsSort>,
}

/// A host's `status`, as a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    Pending,
    InSync,
    Applying,
    Degraded,
    Revoked,
}

impl HostStatus {
    fn as_str(self) -> &'static str {
        match self {
            HostStatus::Pending => "pending",
            HostStatus::InSync => "in_sync",
            HostStatus::Applying => "applying",
            HostStatus::Degraded => "degraded",
            HostStatus::Revoked => "revoked",
        }
    }
}

/// The order of a page of hosts: a field, ascending, or descending with a leading `-`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
pub enum HostsSort {
    #[default]
    #[serde(rename = "hostId")]
    HostId,
    #[serde(rename = "-hostId")]
    HostIdDescending,
    #[serde(rename = "tenantId")]
    TenantId,
    #[serde(rename = "-tenantId")]
    TenantIdDescending,
    #[serde(rename = "status")]
    Status,
    #[serde(rename = "-status")]
    StatusDescending,
    #[serde(rename = "lastSeen")]
    LastSeen,
    #[serde(rename = "-lastSeen")]
    LastSeenDescending,
}

impl HostsSort {
    /// How two hosts compare in this order; hosts equal in the field compare by host id.
    fn compare(self, a: &HostView, b: &HostView) -> Ordering {
        use HostsSort as S;
        let field = match self {
            S::HostId | S::HostIdDescending => Ordering::Equal,
            S::TenantId | S::TenantIdDescending => a.tenant_id.cmp(&b.tenant_id),
            S::Status | S::StatusDescending => a.status.cmp(b.status),
            S::LastSeen | S::LastSeenDescending => a.last_seen.cmp(&b.last_seen),
        };
        let field = if self.is_descending() {
            field.reverse()
        } else {
            field
        };
        let by_id = a.host_id.cmp(&b.host_id);
        field.then(if self == S::HostIdDescending {
            by_id.reverse()
        } else {
            by_id
        })
    }

    fn is_descending(self) -> bool {
        matches!(
            self,
            HostsSort::HostIdDescending
                | HostsSort::TenantIdDescending
                | HostsSort::StatusDescending
                | HostsSort::LastSeenDescending
        )
    }
}

const DEFAULT_HOSTS_PAGE: u32 = 100;
const MAX_HOSTS_PAGE: u32 = 500;
const MAX_HOSTS_OFFSET: u32 = 1_000_000;

impl HostsQuery {
    pub(super) fn is_empty(&self) -> bool {
        self.limit.is_none()
            && self.cursor.is_none()
            && self.offset.is_none()
            && self.tenant.is_none()
            && self.status.is_none()
            && self.connected.is_none()
            && self.q.is_none()
            && self.sort.is_none()
    }

    pub(super) fn check(&self) -> Result<(), ApiError> {
        let bad = |what: &str| Err(ApiError::InvalidQuery(what.to_owned()));
        if self
            .limit
            .is_some_and(|l| !(1..=MAX_HOSTS_PAGE).contains(&l))
        {
            return bad("limit must be 1 to 500");
        }
        if self.offset.is_some_and(|o| o > MAX_HOSTS_OFFSET) {
            return bad("offset must be 0 to 1000000");
        }
        if self.offset.is_some() && self.cursor.is_some() {
            return bad("give cursor or offset, not both");
        }
        if self.cursor.is_some() && self.sort.is_some_and(|s| s != HostsSort::HostId) {
            return bad("cursor pages the default sort (hostId) only: use offset");
        }
        if let Some(cursor) = &self.cursor
            && cursor.parse::<HostId>().is_err()
        {
            return bad("cursor is not a host id");
        }
        if let Some(tenant) = &self.tenant
            && tenant.parse::<keyward_common::TenantId>().is_err()
        {
            return bad("tenant is not a tenant id");
        }
        if let Some(q) = &self.q
            && (q.is_empty() || q.chars().count() > 64)
        {
            return bad("q must be 1 to 64 characters");
        }
        Ok(())
    }

    fn keeps(&self, view: &HostView) -> bool {
        self.tenant.as_ref().is_none_or(|t| &view.tenant_id == t)
            && self.status.is_none_or(|s| view.status == s.as_str())
            && self.connected.is_none_or(|c| view.connected == c)
            && self.q.as_ref().is_none_or(|q| {
                view.host_id.contains(q.as_str()) || view.tenant_id.contains(q.as_str())
            })
            && self
                .cursor
                .as_ref()
                .is_none_or(|c| view.host_id.as_str() > c.as_str())
    }

    /// The page of `views` this query asks for (after [`HostsQuery::check`]).
    pub(super) fn page(&self, mut views: Vec<HostView>) -> HostsPage {
        views.retain(|v| self.keeps(v));
        let sort = self.sort.unwrap_or_default();
        views.sort_by(|a, b| sort.compare(a, b));
        let total = views.len();
        let limit = self.limit.unwrap_or(DEFAULT_HOSTS_PAGE) as usize;
        let offset = self.offset.unwrap_or(0) as usize;
        let more = total > offset.saturating_add(limit);
        let hosts: Vec<HostView> = views.into_iter().skip(offset).take(limit).collect();
        // A cursor is a host id: it pages the host id order only.
        let next_cursor = (more && sort == HostsSort::HostId)
            .then(|| hosts.last().map(|h| h.host_id.clone()))
            .flatten();
        HostsPage {
            hosts,
            total,
            next_cursor,
        }
    }
}

/// A page of hosts, and what its headers say.
#[derive(Debug)]
pub(super) struct HostsPage {
    pub hosts: Vec<HostView>,
    /// Hosts that match the filters, on every page.
    pub total: usize,
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host view with only what the query looks at.
    fn view(host: &str, tenant: &str, status: &'static str, last_seen: Option<&str>) -> HostView {
        HostView {
            host_id: host.to_owned(),
            tenant_id: tenant.to_owned(),
            role: crate::store::HostRole::Vps,
            connected: status == "in_sync",
            status,
            desired_generation: 1,
            applied_generation: 1,
            last_seen: last_seen.map(str::to_owned),
            agent_version: None,
            enrolled_at: None,
            certificate_not_after: None,
            revoked_at: None,
            users: serde_json::Value::Null,
            host_keys: Vec::new(),
            last_error: None,
            logins_dropped: 0,
            reports_dropped: 0,
            recording: false,
            last_login: None,
            last_login_user: None,
            last_drift_at: None,
            drift: None,
        }
    }

    /// Five hosts, in no order: two tenants, ties in every field but the host id.
    fn fleet() -> Vec<HostView> {
        vec![
            view("h-3", "beta", "in_sync", Some("2026-11-28T10:00:03Z")),
            view("h-1", "alpha", "pending", None),
            view("h-5", "alpha", "in_sync", Some("2026-11-28T10:00:05Z")),
            view("h-2", "beta", "revoked", Some("2026-11-28T10:00:05Z")),
            view("h-4", "alpha", "pending", None),
        ]
    }

    /// The query as axum reads it from a URL.
    fn from_url(query: &str) -> Option<HostsQuery> {
        let uri: axum::http::Uri = format!("/api/v1/admin/hosts?{query}").parse().unwrap();
        axum::extract::Query::try_from_uri(&uri).ok().map(|q| q.0)
    }

    fn parse(query: &str) -> HostsQuery {
        let parsed = from_url(query).unwrap();
        parsed.check().unwrap();
        parsed
    }

    fn ids(query: &str) -> Vec<String> {
        parse(query)
            .page(fleet())
            .hosts
            .into_iter()
            .map(|h| h.host_id)
            .collect()
    }

    #[test]
    fn each_order_sorts_by_its_field_then_by_host_id() {
        let cases = [
            ("sort=hostId", ["h-1", "h-2", "h-3", "h-4", "h-5"]),
            ("sort=-hostId", ["h-5", "h-4", "h-3", "h-2", "h-1"]),
            ("sort=tenantId", ["h-1", "h-4", "h-5", "h-2", "h-3"]),
            ("sort=-tenantId", ["h-2", "h-3", "h-1", "h-4", "h-5"]),
            // by the status's name: in_sync, pending, revoked
            ("sort=status", ["h-3", "h-5", "h-1", "h-4", "h-2"]),
            ("sort=-status", ["h-2", "h-1", "h-4", "h-3", "h-5"]),
            // never seen first; h-2 and h-5 were seen at the same time
            ("sort=lastSeen", ["h-1", "h-4", "h-3", "h-2", "h-5"]),
            ("sort=-lastSeen", ["h-2", "h-5", "h-3", "h-1", "h-4"]),
        ];
        for (query, expected) in cases {
            assert_eq!(ids(query), expected, "{query}");
        }
        // No sort is the host id order.
        assert_eq!(ids("limit=5"), ids("sort=hostId"));
    }

    #[test]
    fn pages_of_a_sorted_list_follow_each_other() {
        let mut seen = Vec::new();
        for offset in [0, 2, 4] {
            let page = parse(&format!("sort=-lastSeen&limit=2&offset={offset}")).page(fleet());
            assert_eq!(page.total, 5);
            // A cursor is a host id: only the host id order has one.
            assert_eq!(page.next_cursor, None);
            seen.extend(page.hosts.into_iter().map(|h| h.host_id));
        }
        assert_eq!(seen, ids("sort=-lastSeen"));

        let first = parse("limit=2").page(fleet());
        assert_eq!(first.next_cursor.as_deref(), Some("h-2"));
        let last = parse("limit=2&offset=4").page(fleet());
        assert_eq!(last.next_cursor, None, "no cursor past the last page");
        assert_eq!(ids("limit=2&cursor=h-2&sort=hostId"), ["h-3", "h-4"]);
        let past = parse("offset=10").page(fleet());
        assert!(past.hosts.is_empty());
        assert_eq!(past.total, 5);
    }

    #[test]
    fn filters_narrow_the_total_before_the_page_is_cut() {
        let page = parse("tenant=alpha&sort=-hostId&limit=1").page(fleet());
        assert_eq!(page.total, 3);
        assert_eq!(page.hosts[0].host_id, "h-5");
        assert_eq!(ids("status=pending&sort=-hostId"), ["h-4", "h-1"]);
        assert_eq!(ids("connected=true&sort=-lastSeen"), ["h-5", "h-3"]);
        assert_eq!(ids("q=bet&sort=status"), ["h-3", "h-2"]);
    }

    #[test]
    fn bad_orders_and_cursors_with_other_orders_are_refused() {
        for bad in [
            "sort=desc",
            "sort=hostid",
            "sort=--hostId",
            "sort=",
            "status=asleep",
        ] {
            assert!(from_url(bad).is_none(), "{bad} parsed");
        }
        for bad in [
            "cursor=h-1&sort=tenantId",
            "cursor=h-1&sort=-hostId",
            "cursor=h-1&offset=2",
            "cursor=..",
            "tenant=Acme",
            "limit=0",
        ] {
            let query = from_url(bad).unwrap();
            assert!(
                matches!(query.check(), Err(ApiError::InvalidQuery(_))),
                "{bad} accepted"
            );
        }
        assert!(from_url("cursor=h-1&sort=hostId").unwrap().check().is_ok());
    }

    #[test]
    fn the_openapi_parameters_say_what_is_accepted() {
        let params = serde_json::to_value(HostsQuery::into_params(|| None)).unwrap();
        let schema = |name: &str| {
            params
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("no parameter {name}: {params}"))["schema"]
                .clone()
        };
        let sorts: Vec<String> = serde_json::from_value(schema("sort")["enum"].clone()).unwrap();
        assert_eq!(
            sorts,
            [
                "hostId",
                "-hostId",
                "tenantId",
                "-tenantId",
                "status",
                "-status",
                "lastSeen",
                "-lastSeen"
            ]
        );
        for sort in &sorts {
            assert!(from_url(&format!("sort={sort}")).is_some(), "{sort}");
        }
        let statuses: Vec<String> =
            serde_json::from_value(schema("status")["enum"].clone()).unwrap();
        assert_eq!(
            statuses,
            ["pending", "in_sync", "applying", "degraded", "revoked"]
        );
        for id in ["tenant", "cursor"] {
            assert_eq!(schema(id)["pattern"], r"^[a-z0-9][a-z0-9-]{0,62}$", "{id}");
        }
    }
}
