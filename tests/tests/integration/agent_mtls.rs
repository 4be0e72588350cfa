//! The agents' gRPC endpoint refuses every identity but a live host's current certificate, and a
//! host only ever receives its own signed state.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use keyward_common::proto::agent_hub_client::AgentHubClient;
use keyward_common::proto::{AgentMessage, Hello, agent_message, control_message};
use keyward_tests::{ControlPlane, Database, OpenBao, RawIdentity, unique_tenant};
use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
use serde_json::json;

fn tls(ca_pem: &str, cert_pem: &str, key: &KeyPair) -> Arc<rustls::ClientConfig> {
    keyward_agent::tls::client_config(ca_pem, cert_pem, &key.serialize_pem()).unwrap()
}

/// Opens a session and returns the first state it receives, or the error.
async fn first_state(
    cp: &ControlPlane,
    tls: Arc<rustls::ClientConfig>,
) -> Result<keyward_common::proto::SignedState, String> {
    let url = cp.server().agent_url.clone();
    let mut client: AgentHubClient<_> = keyward_agent::client::connect(&url, tls)
        .await
        .map_err(|e| e.to_string())?;
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello::default())),
    };
    let outbound = tokio_stream::iter(vec![hello]).chain(tokio_stream::pending());
    let response = client
        .session(outbound)
        .await
        .map_err(|s| s.message().to_owned())?;
    let mut inbound = response.into_inner();
    let message = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .map_err(|_| "no state within 10 s".to_owned())?
        .map_err(|s| s.message().to_owned())?
        .ok_or("stream ended")?;
    match message.msg {
        Some(control_message::Msg::State(state)) => Ok(state),
        other => Err(format!("unexpected first message: {other:?}")),
    }
}

use tokio_stream::StreamExt as _;

#[tokio::test]
async fn only_a_live_hosts_current_certificate_gets_its_own_state() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("mtls");
    cp.create_tenant(&tenant).await;
    let a = RawIdentity::enroll(&cp, &tenant).await;
    let b = RawIdentity::enroll(&cp, &tenant).await;
    let ca = a.enrolled["caCertificatePem"].as_str().unwrap().to_owned();
    let pinned = base64::engine::general_purpose::STANDARD
        .decode(a.enrolled["signingPublicKey"].as_str().unwrap())
        .unwrap();
    let pinned = ed25519_dalek::VerifyingKey::from_bytes(&pinned.try_into().unwrap()).unwrap();

    // Host A gets A's state, signed, and nothing of B's.
    let state = first_state(
        &cp,
        tls(&ca, a.enrolled["certificatePem"].as_str().unwrap(), &a.key),
    )
    .await
    .unwrap();
    let decoded = keyward_common::signing::verify_state(&pinned, &state, &a.host_id, 0).unwrap();
    assert_eq!(decoded.host_id, a.host_id);
    assert!(keyward_common::signing::verify_state(&pinned, &state, &b.host_id, 0).is_err());
    assert_eq!(decoded.users.len(), 2);

    // No client certificate: the handshake fails.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(<rustls::pki_types::CertificateDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut anonymous = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    assert!(first_state(&cp, Arc::new(anonymous)).await.is_err());

    // A certificate naming host A from another CA.
    let rogue_ca_key = KeyPair::generate().unwrap();
    let mut rogue_ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    rogue_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue_issuer = Issuer::new(rogue_ca, rogue_ca_key);
    let mut forged = CertificateParams::new(Vec::<String>::new()).unwrap();
    forged.subject_alt_names = vec![SanType::URI(
        format!("urn:keyward:host:{}", a.host_id)
            .try_into()
            .unwrap(),
    )];
    let forged = forged.signed_by(&a.key, &rogue_issuer).unwrap();
    assert!(
        first_state(&cp, tls(&ca, &forged.pem(), &a.key))
            .await
            .is_err()
    );

    // An expired certificate from the real CA (read from Vault as an operator could).
    let (stored_ca, _) = bao.read_kv("_keyward/agent_ca").await.unwrap();
    let ca_key = KeyPair::from_pem(stored_ca["key_pem"].as_str().unwrap()).unwrap();
    let real_issuer = Issuer::from_ca_cert_pem(&ca, ca_key).unwrap();
    let mut expired = CertificateParams::new(Vec::<String>::new()).unwrap();
    expired.subject_alt_names = vec![SanType::URI(
        format!("urn:keyward:host:{}", a.host_id)
            .try_into()
            .unwrap(),
    )];
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = expired.signed_by(&a.key, &real_issuer).unwrap();
    assert!(
        first_state(&cp, tls(&ca, &expired.pem(), &a.key))
            .await
            .is_err()
    );
    // A valid certificate from the real CA that is not the host's current one (e.g. stolen
    // from an earlier enrollment) is refused too.
    let mut stale = CertificateParams::new(Vec::<String>::new()).unwrap();
    stale.subject_alt_names = vec![SanType::URI(
        format!("urn:keyward:host:{}", a.host_id)
            .try_into()
            .unwrap(),
    )];
    let stale = stale.signed_by(&a.key, &real_issuer).unwrap();
    let err = first_state(&cp, tls(&ca, &stale.pem(), &a.key))
        .await
        .unwrap_err();
    assert!(err.contains("current certificate"), "{err}");

    // A revoked host is refused from then on.
    let revoked = cp
        .admin_post(
            &format!("/api/v1/admin/hosts/{}/revoke", a.host_id),
            json!({}),
        )
        .await;
    assert_eq!(revoked.status, 200);
    let err = first_state(
        &cp,
        tls(&ca, a.enrolled["certificatePem"].as_str().unwrap(), &a.key),
    )
    .await
    .unwrap_err();
    assert!(err.contains("revoked"), "{err}");
    // B is unaffected.
    let state = first_state(
        &cp,
        tls(&ca, b.enrolled["certificatePem"].as_str().unwrap(), &b.key),
    )
    .await
    .unwrap();
    assert!(keyward_common::signing::verify_state(&pinned, &state, &b.host_id, 0).is_ok());
}

#[tokio::test]
async fn enrollment_tokens_work_once_and_expire() {
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("enr");
    cp.create_tenant(&tenant).await;
    let registered = cp
        .admin_post(
            "/api/v1/admin/hosts",
            json!({ "tenantId": tenant, "hostId": "vps-1" }),
        )
        .await;
    assert_eq!(registered.status, 201, "{}", registered.text());
    let token = registered.json()["enrollmentToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let enroll = |token: String, csr: String| {
        let cp = &cp;
        async move {
            cp.request(
                reqwest::Method::POST,
                "/api/v1/agent/enroll",
                None,
                Some(json!({ "token": token, "csrPem": csr })),
            )
            .await
        }
    };
    enroll("kwe_nope".into(), csr.clone())
        .await
        .assert_problem(401, "enrollment_token_invalid");
    enroll(token.clone(), "not a csr".into())
        .await
        .assert_problem(400, "invalid_body");
    assert_eq!(enroll(token.clone(), csr.clone()).await.status, 200);
    enroll(token, csr.clone())
        .await
        .assert_problem(401, "enrollment_token_invalid");
    // A token past its TTL is refused (its expiry moved into the past, as time would).
    let late = cp
        .admin_post(
            "/api/v1/admin/hosts",
            json!({ "tenantId": tenant, "hostId": "vps-late" }),
        )
        .await
        .json();
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(&cp.database_url)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE hosts SET enroll_expires_at = '2000-01-01T00:00:00Z' WHERE host_id = 'vps-late'",
    )
    .execute(&mut db)
    .await
    .unwrap();
    enroll(
        late["enrollmentToken"].as_str().unwrap().to_owned(),
        csr.clone(),
    )
    .await
    .assert_problem(401, "enrollment_token_invalid");
    // Duplicate host ids and bad ids are refused.
    cp.admin_post(
        "/api/v1/admin/hosts",
        json!({ "tenantId": tenant, "hostId": "vps-1" }),
    )
    .await
    .assert_problem(409, "host_exists");
    cp.admin_post(
        "/api/v1/admin/hosts",
        json!({ "tenantId": tenant, "hostId": "../x" }),
    )
    .await
    .assert_problem(400, "invalid_id");
    cp.admin_post("/api/v1/admin/hosts", json!({ "tenantId": "nobody" }))
        .await
        .assert_problem(404, "tenant_not_found");
    // Refused enrollments are audited with the caller's address, at most once per source and
    // minute (the first at once; the later ones, with their count, a minute after it).
    let refused = cp
        .admin_get("/api/v1/admin/audit?action=host.enroll")
        .await
        .json();
    let outcomes: Vec<&str> = refused["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["success", "refused"]);
    assert!(refused["events"][1]["sourceAddr"] == "127.0.0.1");
    assert_eq!(refused["events"][1]["detail"]["attempts"], 1);
}

#[tokio::test]
async fn a_renewed_certificate_replaces_the_old_one() {
    use keyward_common::proto::RenewCertificate;
    let bao = OpenBao::start().await;
    let cp = ControlPlane::start_fast(&bao, Database::Sqlite).await;
    let tenant = unique_tenant("renew");
    cp.create_tenant(&tenant).await;
    let a = RawIdentity::enroll(&cp, &tenant).await;
    let ca = a.enrolled["caCertificatePem"].as_str().unwrap().to_owned();
    let old_cert = a.enrolled["certificatePem"].as_str().unwrap().to_owned();

    // Ask for a new certificate for the same key over the stream.
    let url = cp.server().agent_url.clone();
    let mut client = keyward_agent::client::connect(&url, tls(&ca, &old_cert, &a.key))
        .await
        .unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&a.key)
        .unwrap()
        .pem()
        .unwrap();
    let messages = vec![
        AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello::default())),
        },
        AgentMessage {
            msg: Some(agent_message::Msg::Renew(RenewCertificate { csr_pem: csr })),
        },
    ];
    let outbound = tokio_stream::iter(messages).chain(tokio_stream::pending());
    let mut inbound = client.session(outbound).await.unwrap().into_inner();
    let new_cert = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = inbound.message().await.unwrap().unwrap();
            if let Some(control_message::Msg::Certificate(c)) = message.msg {
                return c.certificate_pem;
            }
        }
    })
    .await
    .expect("a renewed certificate within 10 s");
    assert_ne!(new_cert, old_cert);
    drop(inbound);

    // The new certificate works; the old one is no longer the host's current one.
    assert!(first_state(&cp, tls(&ca, &new_cert, &a.key)).await.is_ok());
    let err = first_state(&cp, tls(&ca, &old_cert, &a.key))
        .await
        .unwrap_err();
    assert!(err.contains("current certificate"), "{err}");
    let view = cp
        .admin_get(&format!("/api/v1/admin/hosts/{}", a.host_id))
        .await
        .json();
    assert!(view["certificateNotAfter"].as_str().is_some());
    let renewals = cp
        .admin_get("/api/v1/admin/audit?action=host.certificate_renew")
        .await
        .json();
    assert_eq!(renewals["events"].as_array().unwrap().len(), 1);
}
