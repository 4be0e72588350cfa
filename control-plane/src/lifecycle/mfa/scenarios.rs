//! Step-up over the real SQL store (SQLite) with a manual clock: enrolment and confirmation,
//! the policy, replay, skew, recovery codes and the lockout, each audited.

use chrono::Duration;
use zeroize::Zeroizing;

use super::super::tests::{fixture, new_tenant};
use super::totp::{TotpSeed, step_of};
use super::*;
use crate::clock::Clock;
use crate::config::SensitiveOperation;
use crate::lifecycle::DomainError;
use crate::store::AuditFilter;

fn proof(value: &str) -> MfaProof {
    MfaProof::new(Zeroizing::new(value.to_owned()))
}

fn tenant_caller() -> Caller {
    Caller {
        token_id: Some("tok_00000000000000aa".into()),
        role: Some(Role::Tenant("t1".parse().unwrap())),
        source_addr: Some("192.0.2.1".into()),
        idp_mfa: false,
    }
}

fn seed_of(enrolment: &TotpEnrolment) -> TotpSeed {
    let bytes = data_encoding::BASE32_NOPAD
        .decode(enrolment.secret.as_bytes())
        .unwrap();
    TotpSeed::from_bytes(Zeroizing::new(bytes))
}

async fn actions(f: &super::super::tests::Fixture) -> Vec<(String, String)> {
    let page = f
        .lifecycle
        .store()
        .audit_events(&AuditFilter {
            tenant_id: None,
            action: None,
            since: None,
            until: None,
            before_seq: None,
            limit: 1000,
        })
        .await
        .unwrap();
    page.events
        .iter()
        .filter(|e| e.action.starts_with("mfa"))
        .map(|e| (e.action.clone(), e.outcome.clone()))
        .collect()
}

/// A tenant with the policy naming `download` and `regenerate`, a confirmed factor, its seed
/// and recovery codes.
async fn enrolled() -> (
    super::super::tests::Fixture,
    TotpSeed,
    Vec<Zeroizing<String>>,
) {
    let f = fixture().await;
    let caller = tenant_caller();
    f.lifecycle
        .create_tenant(&Caller::system(), new_tenant())
        .await
        .unwrap();
    f.lifecycle
        .set_mfa_policy(
            &Caller::system(),
            &"t1".parse().unwrap(),
            Some(vec![
                SensitiveOperation::Regenerate,
                SensitiveOperation::Download,
            ]),
        )
        .await
        .unwrap();
    // Required and nothing enrolled: 403, not a prompt for a code.
    let refused = f
        .lifecycle
        .step_up(&caller, SensitiveOperation::Regenerate, None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "mfa_not_enrolled");
    let enrolment = f.lifecycle.enrol_totp(&caller, None).await.unwrap();
    let seed = seed_of(&enrolment);
    // Unconfirmed: still nothing to step up with.
    let refused = f
        .lifecycle
        .step_up(&caller, SensitiveOperation::Regenerate, None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "mfa_not_enrolled");
    let now = step_of(f.clock.now());
    let wrong = f
        .lifecycle
        .confirm_totp(&caller, &enrolment.factor_id, "000000")
        .await;
    if seed.code_at(now).as_str() != "000000" {
        assert_eq!(wrong.unwrap_err().code(), "mfa_invalid");
    }
    let codes = f
        .lifecycle
        .confirm_totp(&caller, &enrolment.factor_id, &seed.code_at(now))
        .await
        .unwrap();
    assert_eq!(codes.len(), 10);
    assert_eq!(
        f.lifecycle
            .confirm_totp(&caller, &enrolment.factor_id, &seed.code_at(now))
            .await
            .unwrap_err()
            .code(),
        "mfa_factor_confirmed"
    );
    // The confirming code's step is taken: the next step's code is needed.
    f.clock.advance(Duration::seconds(30));
    (f, seed, codes)
}

#[tokio::test]
async fn a_code_is_taken_once_within_one_step_of_skew() {
    let (f, seed, _) = enrolled().await;
    let caller = tenant_caller();
    let op = SensitiveOperation::Regenerate;
    let now = step_of(f.clock.now());
    // Not named by the policy: no factor asked for.
    f.lifecycle
        .step_up(&caller, SensitiveOperation::RotateAll, None)
        .await
        .unwrap();
    assert_eq!(
        f.lifecycle
            .step_up(&caller, op, None)
            .await
            .unwrap_err()
            .code(),
        "mfa_required"
    );
    // Two steps ahead is too far; one ahead (a fast phone) is taken.
    let far = seed.code_at(now + 2);
    if seed.matching_step(&far, now).is_none() {
        let refused = f
            .lifecycle
            .step_up(&caller, op, Some(&proof(&format!("totp:{}", far.as_str()))))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), "mfa_invalid");
    }
    let ahead = proof(&format!("totp:{}", seed.code_at(now + 1).as_str()));
    f.lifecycle
        .step_up(&caller, op, Some(&ahead))
        .await
        .unwrap();
    // The same code again, and an older step's, are replays.
    assert_eq!(
        f.lifecycle
            .step_up(&caller, op, Some(&ahead))
            .await
            .unwrap_err()
            .code(),
        "mfa_replayed"
    );
    let current = proof(&format!("totp:{}", seed.code_at(now).as_str()));
    assert_eq!(
        f.lifecycle
            .step_up(&caller, op, Some(&current))
            .await
            .unwrap_err()
            .code(),
        "mfa_replayed"
    );
    // Two steps later the then-current code is taken.
    f.clock.advance(Duration::seconds(60));
    let later = proof(&format!("totp:{}", seed.code_at(now + 2).as_str()));
    f.lifecycle
        .step_up(&caller, op, Some(&later))
        .await
        .unwrap();
    let audited = actions(&f).await;
    assert!(audited.contains(&("mfa.step_up".into(), "success".into())));
    assert!(audited.contains(&("mfa.step_up".into(), "refused".into())));
}

#[tokio::test]
async fn recovery_codes_work_once_and_failures_lock_after_five() {
    let (f, seed, codes) = enrolled().await;
    let caller = tenant_caller();
    let op = SensitiveOperation::Download;
    let recovery = proof(&format!("recovery:{}", codes[0].as_str()));
    f.lifecycle
        .step_up(&caller, op, Some(&recovery))
        .await
        .unwrap();
    assert_eq!(
        f.lifecycle
            .step_up(&caller, op, Some(&recovery))
            .await
            .unwrap_err()
            .code(),
        "mfa_invalid"
    );
    // Four more failures (five in all): the fifth is still answered for what it is...
    for bad in [
        "totp:12345",
        "nonsense",
        "recovery:AAAA-AAAA-AAAA-AAAA",
        "totp:abcdef",
    ] {
        assert_eq!(
            f.lifecycle
                .step_up(&caller, op, Some(&proof(bad)))
                .await
                .unwrap_err()
                .code(),
            "mfa_invalid",
            "{bad}"
        );
    }
    // ... then even the right code is refused until the window passes.
    let now = step_of(f.clock.now());
    let right = proof(&format!("totp:{}", seed.code_at(now).as_str()));
    let locked = f
        .lifecycle
        .step_up(&caller, op, Some(&right))
        .await
        .unwrap_err();
    assert!(
        matches!(locked, DomainError::MfaLocked { retry_after_secs } if retry_after_secs <= 300),
        "{locked:?}"
    );
    let audited = actions(&f).await;
    assert_eq!(
        audited
            .iter()
            .filter(|(a, o)| a == "mfa.step_up" && o == "refused")
            .count(),
        5,
        "{audited:?}"
    );
    assert_eq!(
        audited.iter().filter(|(a, _)| a == "mfa.locked").count(),
        1,
        "{audited:?}"
    );
    f.clock.advance(Duration::minutes(5));
    let now = step_of(f.clock.now());
    let right = proof(&format!("totp:{}", seed.code_at(now).as_str()));
    f.lifecycle
        .step_up(&caller, op, Some(&right))
        .await
        .unwrap();
    // Nine recovery codes left, and a factor is listed without its seed.
    let factors = f.lifecycle.mfa_factors(&caller).await.unwrap();
    assert_eq!(factors.len(), 1);
    assert_eq!(factors[0].recovery_codes_left, 9);
}

#[tokio::test]
async fn another_factor_or_a_deletion_needs_the_confirmed_one() {
    let (f, seed, _) = enrolled().await;
    let caller = tenant_caller();
    assert_eq!(
        f.lifecycle
            .enrol_totp(&caller, None)
            .await
            .unwrap_err()
            .code(),
        "mfa_required"
    );
    let id = f.lifecycle.mfa_factors(&caller).await.unwrap()[0]
        .factor_id
        .clone();
    assert_eq!(
        f.lifecycle
            .delete_mfa_factor(&caller, &id, None)
            .await
            .unwrap_err()
            .code(),
        "mfa_required"
    );
    let now = step_of(f.clock.now());
    let code = proof(&format!("totp:{}", seed.code_at(now).as_str()));
    f.lifecycle
        .delete_mfa_factor(&caller, &id, Some(&code))
        .await
        .unwrap();
    assert!(f.lifecycle.mfa_factors(&caller).await.unwrap().is_empty());
    // An admin's factors are the admin token's, not the tenant's.
    let admin = Caller {
        token_id: Some("tok_00000000000000bb".into()),
        role: Some(Role::Admin),
        source_addr: None,
        idp_mfa: false,
    };
    assert!(f.lifecycle.mfa_factors(&admin).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_enrolment_left_unconfirmed_expires_and_frees_its_place() {
    let f = fixture().await;
    let caller = tenant_caller();
    f.lifecycle
        .create_tenant(&Caller::system(), new_tenant())
        .await
        .unwrap();
    let mut started = Vec::new();
    for _ in 0..enrol::MAX_FACTORS {
        started.push(f.lifecycle.enrol_totp(&caller, None).await.unwrap());
    }
    assert_eq!(
        f.lifecycle
            .enrol_totp(&caller, None)
            .await
            .unwrap_err()
            .code(),
        "quota_exceeded",
        "five unconfirmed enrolments fill the places"
    );
    // Past the time to confirm: none can be confirmed any more, and they free their places.
    f.clock.advance(enrol::ENROLMENT_TTL + Duration::seconds(1));
    let late = &started[0];
    let code = seed_of(late).code_at(step_of(f.clock.now()));
    assert_eq!(
        f.lifecycle
            .confirm_totp(&caller, &late.factor_id, &code)
            .await
            .unwrap_err()
            .code(),
        "mfa_factor_not_found"
    );
    let fresh = f.lifecycle.enrol_totp(&caller, None).await.unwrap();
    let listed = f.lifecycle.mfa_factors(&caller).await.unwrap();
    assert_eq!(listed.len(), 1, "the abandoned ones were deleted");
    assert_eq!(listed[0].factor_id, fresh.factor_id);
}

#[tokio::test]
async fn an_admin_reset_removes_a_tenants_factors_and_lockout_and_no_one_elses() {
    let (f, seed, codes) = enrolled().await;
    let caller = tenant_caller();
    let admin = Caller {
        token_id: Some("tok_00000000000000ad".into()),
        role: Some(Role::Admin),
        source_addr: None,
        idp_mfa: false,
    };
    // Another tenant with a factor of its own, and the admin's own factor.
    let other: keyward_common::TenantId = "t2".parse().unwrap();
    f.lifecycle
        .create_tenant(
            &Caller::system(),
            crate::lifecycle::NewTenant {
                tenant_id: other.clone(),
                ..new_tenant()
            },
        )
        .await
        .unwrap();
    let other_caller = Caller {
        role: Some(Role::Tenant(other.clone())),
        ..tenant_caller()
    };
    f.lifecycle.enrol_totp(&other_caller, None).await.unwrap();
    f.lifecycle.enrol_totp(&admin, None).await.unwrap();
    // The tenant locks itself out.
    for _ in 0..5 {
        let _ = f
            .lifecycle
            .step_up(
                &caller,
                SensitiveOperation::Download,
                Some(&proof("totp:x")),
            )
            .await;
    }
    let now = step_of(f.clock.now());
    let code = proof(&format!("totp:{}", seed.code_at(now).as_str()));
    let locked = f
        .lifecycle
        .enrol_totp(&caller, Some(&code))
        .await
        .unwrap_err();
    assert_eq!(locked.code(), "mfa_locked");

    let t1: keyward_common::TenantId = "t1".parse().unwrap();
    assert_eq!(f.lifecycle.reset_tenant_mfa(&admin, &t1).await.unwrap(), 1);
    assert!(
        f.lifecycle
            .tenant_mfa_factors(&t1)
            .await
            .unwrap()
            .is_empty()
    );
    // Nothing to step up with, and the old recovery codes are gone with the factor.
    assert_eq!(
        f.lifecycle
            .step_up(&caller, SensitiveOperation::Download, None)
            .await
            .unwrap_err()
            .code(),
        "mfa_not_enrolled"
    );
    let rescue = proof(&format!("recovery:{}", codes[0].as_str()));
    assert_eq!(
        f.lifecycle
            .step_up(&caller, SensitiveOperation::Download, Some(&rescue))
            .await
            .unwrap_err()
            .code(),
        "mfa_not_enrolled"
    );
    // It enrols again, with no code and no lockout left over.
    let again = f.lifecycle.enrol_totp(&caller, None).await.unwrap();
    let fresh = seed_of(&again);
    f.lifecycle
        .confirm_totp(&caller, &again.factor_id, &fresh.code_at(now))
        .await
        .unwrap();
    // The other tenant's and the admin's factors are untouched.
    assert_eq!(
        f.lifecycle.tenant_mfa_factors(&other).await.unwrap().len(),
        1
    );
    assert_eq!(f.lifecycle.mfa_factors(&admin).await.unwrap().len(), 1);
    // An unknown tenant is not found, and not audited.
    let missing: keyward_common::TenantId = "t9".parse().unwrap();
    assert_eq!(
        f.lifecycle
            .reset_tenant_mfa(&admin, &missing)
            .await
            .unwrap_err()
            .code(),
        "tenant_not_found"
    );
    // Audited on the tenant's chain with the count and the admin's token, no secret.
    let events = f
        .lifecycle
        .store()
        .audit_events(&AuditFilter {
            tenant_id: Some(t1),
            action: Some("mfa.reset".into()),
            since: None,
            until: None,
            before_seq: None,
            limit: 10,
        })
        .await
        .unwrap()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].outcome, "success");
    assert_eq!(events[0].detail["removed"], 1);
    assert_eq!(
        events[0].actor_token_id.as_deref(),
        Some("tok_00000000000000ad")
    );
    assert!(!format!("{events:?}").contains(codes[0].as_str()));
}
