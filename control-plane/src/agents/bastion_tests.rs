//! A bastion's part of the desired state: the routes of tenants with a live VPS and a key set
//! that is not revoked, and the jump user only on a bastion where certificates are configured.

use std::time::Duration;

use keyward_common::{HostId, KeyKind, TenantId, UnixUser};

use super::state::{StateInputs, desired_state};
use crate::caller::Caller;
use crate::changes::Change;
use crate::lifecycle::NewTenant;
use crate::lifecycle::tests::{fixture, new_tenant};
use crate::store::HostRole;

const CA: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

fn tenant(id: &str, vps_ip: &str, ssh_port: u16) -> NewTenant {
    NewTenant {
        tenant_id: id.parse().unwrap(),
        vps_ip: vps_ip.into(),
        ssh_port,
        ..new_tenant()
    }
}

#[tokio::test]
async fn a_bastion_routes_each_tenant_with_a_live_vps_and_a_key_to_its_own_address() {
    let f = fixture().await;
    let caller = Caller::system();
    let ttl = Duration::from_secs(3600);
    let register = |tenant: &str, host: &str, role| {
        let (tenant, host): (TenantId, HostId) = (tenant.parse().unwrap(), host.parse().unwrap());
        let lifecycle = &f.lifecycle;
        let caller = &caller;
        async move {
            lifecycle
                .register_host(caller, &tenant, host, role, ttl)
                .await
                .unwrap();
        }
    };
    for (id, ip, port) in [
        ("with-vps", "192.0.2.1", 22),
        ("no-host", "192.0.2.2", 22),
        ("host-revoked", "192.0.2.3", 22),
        ("platform", "192.0.2.4", 22),
        ("key-revoked", "2001:db8::5", 2222),
    ] {
        f.lifecycle
            .create_tenant(&caller, tenant(id, ip, port))
            .await
            .unwrap();
    }
    register("with-vps", "vps-1", HostRole::Vps).await;
    register("host-revoked", "vps-3", HostRole::Vps).await;
    register("key-revoked", "vps-5", HostRole::Vps).await;
    f.changes.take();
    register("platform", "jump-1", HostRole::Bastion).await;
    // A registration wakes the tenant's hosts and every bastion.
    assert!(
        f.changes
            .take()
            .contains(&Change::Tenant("platform".parse().unwrap()))
    );
    f.lifecycle
        .revoke_host(&caller, &"vps-3".parse().unwrap())
        .await
        .unwrap();
    f.lifecycle
        .revoke(&caller, &"key-revoked".parse().unwrap(), KeyKind::Tenant)
        .await
        .unwrap();

    let routes: Vec<String> = f
        .lifecycle
        .store()
        .jump_routes(100)
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{}:{} -> {}", r.tenant, r.kind, r.to))
        .collect();
    assert_eq!(
        routes,
        [
            "key-revoked:admin -> [2001:db8::5]:2222",
            "with-vps:admin -> 192.0.2.1:22",
            "with-vps:tenant -> 192.0.2.1:22",
        ]
    );
    assert_eq!(f.lifecycle.store().jump_routes(1).await.unwrap().len(), 1);

    let jump: UnixUser = "kwjump".parse().unwrap();
    let store = f.lifecycle.store();
    let now = f.lifecycle.now();
    let with_ca = StateInputs {
        ca_keys: &[CA.to_owned()],
        jump_user: &jump,
    };
    let bastion = desired_state(store, &"jump-1".parse().unwrap(), now, with_ca)
        .await
        .unwrap();
    let users: Vec<&str> = bastion.users.iter().map(|u| u.user.as_str()).collect();
    assert_eq!(users, ["kwadmin", "tenant", "kwjump"]);
    let jumper = &bastion.users[2];
    assert!(jumper.keys.is_empty() && jumper.principals.is_empty());
    assert_eq!(jumper.session_epoch, bastion.generation);
    let lines: Vec<(String, Vec<String>)> = jumper
        .jump_principals
        .iter()
        .map(|p| (p.principal.clone(), p.permit_open.clone()))
        .collect();
    assert_eq!(
        lines,
        [
            (
                "keyward:key-revoked:admin".into(),
                vec!["[2001:db8::5]:2222".into()]
            ),
            ("keyward:with-vps:admin".into(), vec!["192.0.2.1:22".into()]),
            (
                "keyward:with-vps:tenant".into(),
                vec!["192.0.2.1:22".into()]
            ),
        ]
    );
    // Its own users are the platform tenant's, with their principals as on any host.
    assert_eq!(bastion.users[0].principals, ["keyward:platform:admin"]);

    // No CA: no certificate logs in, no jump user. A VPS never has one.
    let without_ca = StateInputs {
        ca_keys: &[],
        jump_user: &jump,
    };
    let bastion = desired_state(store, &"jump-1".parse().unwrap(), now, without_ca)
        .await
        .unwrap();
    assert_eq!(bastion.users.len(), 2);
    let vps = desired_state(store, &"vps-1".parse().unwrap(), now, with_ca)
        .await
        .unwrap();
    assert!(vps.users.iter().all(|u| u.jump_principals.is_empty()));
    assert_eq!(vps.users.len(), 2);
}
