//! Who may manage whose keys.

use std::collections::HashSet;

use crate::error::Error;
use crate::principal::Principal;
use crate::service::{IdKind, validate_id};

/// The key operation being attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create a key.
    Create,
    /// Read one key.
    Get,
    /// List keys.
    List,
    /// Remove a key.
    Remove,
}

/// One attempted key operation, as a [`Policy`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct KeyAccess<'a> {
    /// Who is asking.
    pub caller: &'a Principal,
    /// The target organization (the org header, else the caller's own).
    pub org_id: &'a str,
    /// The machine user whose keys are concerned.
    pub user_id: &'a str,
    /// What is attempted.
    pub action: Action,
}

/// Decides whether a key operation is allowed. Consulted before anything is
/// read from the store, so a refused caller learns nothing about stored keys.
///
/// Any `Fn(&KeyAccess) -> bool` is a policy:
///
/// ```
/// use jwt_profile::policy::{KeyAccess, Policy};
/// // Only users of organization "ops" may manage keys, and only their own.
/// let policy = |a: &KeyAccess<'_>| &*a.caller.org_id == "ops" && &*a.caller.user_id == a.user_id;
/// fn takes(_: impl Policy) {}
/// takes(policy);
/// ```
pub trait Policy: Send + Sync + 'static {
    /// Whether `access` is allowed.
    fn allows(&self, access: &KeyAccess<'_>) -> bool;
}

impl<F> Policy for F
where
    F: Fn(&KeyAccess<'_>) -> bool + Send + Sync + 'static,
{
    fn allows(&self, access: &KeyAccess<'_>) -> bool {
        self(access)
    }
}

/// The default policy: a caller manages its own keys in its own
/// organization; configured administrators manage any user's keys in any
/// organization.
///
/// ```
/// use jwt_profile::policy::DefaultPolicy;
/// let policy = DefaultPolicy::new().with_admin("default", "admin");
/// assert!(policy.is_admin("default", "admin"));
/// assert!(!policy.is_admin("other", "admin"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct DefaultPolicy {
    admins: HashSet<(String, String)>,
}

impl DefaultPolicy {
    /// Self-management only, no administrators.
    pub fn new() -> DefaultPolicy {
        DefaultPolicy::default()
    }

    /// Adds an administrator, named by organization and user id.
    pub fn with_admin(mut self, org_id: impl Into<String>, user_id: impl Into<String>) -> Self {
        self.admins.insert((org_id.into(), user_id.into()));
        self
    }

    /// Adds an administrator after checking both ids against the id rules
    /// (1–200 bytes of UTF-8, no control characters, no `/`), so a
    /// misconfigured administrator is reported at start-up instead of never
    /// matching a caller.
    ///
    /// ```
    /// use jwt_profile::policy::DefaultPolicy;
    /// assert!(DefaultPolicy::new().try_with_admin("default", "admin").is_ok());
    /// let err = DefaultPolicy::new().try_with_admin("default", "a/b").unwrap_err();
    /// assert_eq!(err.id(), "PARAM-user-id-invalid");
    /// let err = DefaultPolicy::new().try_with_admin("", "admin").unwrap_err();
    /// assert_eq!(err.id(), "PARAM-org-id-invalid");
    /// ```
    pub fn try_with_admin(
        self,
        org_id: impl Into<String>,
        user_id: impl Into<String>,
    ) -> Result<Self, Error> {
        let (org_id, user_id) = (org_id.into(), user_id.into());
        validate_id(IdKind::Org, &org_id)?;
        validate_id(IdKind::User, &user_id)?;
        Ok(self.with_admin(org_id, user_id))
    }

    /// Whether (`org_id`, `user_id`) is a configured administrator.
    pub fn is_admin(&self, org_id: &str, user_id: &str) -> bool {
        // Two small strings per check; the set is tiny.
        self.admins
            .contains(&(org_id.to_owned(), user_id.to_owned()))
    }
}

impl Policy for DefaultPolicy {
    fn allows(&self, a: &KeyAccess<'_>) -> bool {
        let own = &*a.caller.user_id == a.user_id && &*a.caller.org_id == a.org_id;
        own || self.is_admin(&a.caller.org_id, &a.caller.user_id)
    }
}
