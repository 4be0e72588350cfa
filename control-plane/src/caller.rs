//! Who is acting: a token's holder or a signed-in web UI user (with its role and address), or
//! keyward itself. A plain
//! value the domain records in the audit log; how a request becomes one is the transport's
//! business (`api::auth`).

use crate::store::Role;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None` for the system itself (the scheduler, the bootstrap).
    pub token_id: Option<String>,
    pub role: Option<Role>,
    pub source_addr: Option<String>,
    /// A web UI session whose identity provider did multi-factor authentication recently
    /// enough (`[oidc]` mfa_*): it stands for the step-up a policy asks for.
    pub idp_mfa: bool,
}

impl Caller {
    /// keyward acting on its own (start-up, schedules).
    pub fn system() -> Self {
        Self {
            token_id: None,
            role: None,
            source_addr: None,
            idp_mfa: false,
        }
    }

    pub fn role_name(&self) -> &'static str {
        self.role.as_ref().map_or("system", Role::name)
    }
}
