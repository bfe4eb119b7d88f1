//! Grants: who may write what, in SMART-on-FHIR scope syntax.
//!
//! A [`Grant`] gives a writer a [`Role`], a list of [`Scope`]s such as
//! `patient/Observation.cru` or `patient/*.rs`, optional category limits and
//! an optional expiry. [`Grant::allows`] is the one decision `apply` makes for
//! every write; it is pure, so every peer decides the same.

use crate::fhir::Coding;
use serde::{Deserialize, Serialize};

/// What a writer is to the patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Role {
    /// One of the patient's own devices: may do everything, including grants.
    Owner,
    /// A clinician.
    Practitioner,
    /// A laboratory or imaging service.
    Lab,
    /// An organisation (hospital, pharmacy).
    Organization,
    /// A backup peer that stores and serves the record but never writes.
    Mirror,
}

/// The SMART v2 permissions (`c r u d s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Perms(u8);

impl Perms {
    /// Create.
    pub const CREATE: Perms = Perms(1);
    /// Read.
    pub const READ: Perms = Perms(2);
    /// Update.
    pub const UPDATE: Perms = Perms(4);
    /// Delete.
    pub const DELETE: Perms = Perms(8);
    /// Search.
    pub const SEARCH: Perms = Perms(16);
    /// All five.
    pub const ALL: Perms = Perms(31);

    /// Whether every permission in `other` is in `self`.
    pub fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    pub fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }
}

/// One SMART scope, e.g. `patient/Observation.cru` or `patient/*.read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// The resource type, or `None` for `*`.
    pub resource_type: Option<String>,
    /// The permissions.
    pub perms: Perms,
}

/// A scope string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {0:?}")]
pub struct ScopeError(pub String);

impl Scope {
    /// Parses `patient/Type.perms` (SMART v2 `cruds` letters in order, or
    /// v1 `read`, `write`, `*`). `user/` and `system/` contexts are read the
    /// same way: a record holds one patient.
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        let err = || ScopeError(s.to_owned());
        let (ctx, rest) = s.split_once('/').ok_or_else(err)?;
        if !matches!(ctx, "patient" | "user" | "system") {
            return Err(err());
        }
        let (ty, perms) = rest.rsplit_once('.').ok_or_else(err)?;
        let resource_type = match ty {
            "*" => None,
            t if crate::fhir::is_resource_type(t) => Some(t.to_owned()),
            _ => return Err(err()),
        };
        let perms = match perms {
            "read" => Perms::READ.union(Perms::SEARCH),
            "write" => Perms::CREATE.union(Perms::UPDATE).union(Perms::DELETE),
            "*" => Perms::ALL,
            letters => {
                let mut p = Perms::default();
                let mut last = None;
                for c in letters.chars() {
                    let (bit, idx) = match c {
                        'c' => (Perms::CREATE, 0),
                        'r' => (Perms::READ, 1),
                        'u' => (Perms::UPDATE, 2),
                        'd' => (Perms::DELETE, 3),
                        's' => (Perms::SEARCH, 4),
                        _ => return Err(err()),
                    };
                    // SMART v2 requires the letters in order, each once.
                    if last.is_some_and(|l| l >= idx) {
                        return Err(err());
                    }
                    last = Some(idx);
                    p = p.union(bit);
                }
                if letters.is_empty() {
                    return Err(err());
                }
                p
            }
        };
        Ok(Scope {
            resource_type,
            perms,
        })
    }

    fn covers(&self, resource_type: &str, need: Perms) -> bool {
        self.resource_type
            .as_deref()
            .is_none_or(|t| t == resource_type)
            && self.perms.contains(need)
    }
}

/// What a writer may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// The scopes (ignored for [`Role::Owner`], who may do everything).
    pub scopes: Vec<Scope>,
    /// If not empty, writes must carry one of these category codes
    /// (matched on code, and on system when the limit names one).
    pub categories: Vec<Coding>,
    /// Writes claimed at or after this time (ms since the epoch) are refused.
    pub expires: Option<u64>,
    /// The grantee device's network identity (swarm public key), which the
    /// record's firewall lets in while the grant is live.
    pub peer: Option<[u8; 32]>,
}

/// A write, as the consent check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// A resource that does not exist (or is deleted) is written.
    Create,
    /// An existing resource is replaced.
    Update,
    /// A resource is deleted.
    Delete,
}

/// Why a grant does not allow a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// The writer has no grant.
    #[error("the writer has no grant")]
    NoGrant,
    /// The writer's grant was revoked.
    #[error("the writer's grant was revoked")]
    Revoked,
    /// The grant had expired at the write's time.
    #[error("the writer's grant expired")]
    Expired,
    /// No scope covers this action on this resource type.
    #[error("no scope allows this write to {0}")]
    OutOfScope(String),
    /// The resource's categories are outside the grant's.
    #[error("category not granted")]
    Category,
    /// Only an owner may do this.
    #[error("only the patient's devices may do this")]
    NotOwner,
}

impl Grant {
    /// An owner grant (the patient's devices).
    pub fn owner() -> Grant {
        Grant {
            role: Role::Owner,
            scopes: Vec::new(),
            categories: Vec::new(),
            expires: None,
            peer: None,
        }
    }

    /// A grant from scope strings.
    pub fn new(role: Role, scopes: &[&str]) -> Result<Grant, ScopeError> {
        Ok(Grant {
            role,
            scopes: scopes
                .iter()
                .map(|s| Scope::parse(s))
                .collect::<Result<_, _>>()?,
            categories: Vec::new(),
            expires: None,
            peer: None,
        })
    }

    /// Names the grantee device's network identity (for the firewall).
    pub fn with_peer(mut self, identity: [u8; 32]) -> Grant {
        self.peer = Some(identity);
        self
    }

    /// Limits writes to resources with one of these categories.
    pub fn with_categories(mut self, categories: Vec<Coding>) -> Grant {
        self.categories = categories;
        self
    }

    /// Sets the expiry (ms since the epoch).
    pub fn with_expiry(mut self, expires: u64) -> Grant {
        self.expires = Some(expires);
        self
    }

    /// Whether this grant allows `action` on a resource of `resource_type`
    /// with `categories`, at time `now`.
    pub fn allows(
        &self,
        action: Action,
        resource_type: &str,
        categories: &[Coding],
        now: u64,
    ) -> Result<(), Denied> {
        if self.expires.is_some_and(|e| now >= e) {
            return Err(Denied::Expired);
        }
        if self.role == Role::Owner {
            return Ok(());
        }
        let need = match action {
            Action::Create => Perms::CREATE,
            Action::Update => Perms::UPDATE,
            Action::Delete => Perms::DELETE,
        };
        if !self.scopes.iter().any(|s| s.covers(resource_type, need)) {
            return Err(Denied::OutOfScope(resource_type.to_owned()));
        }
        if !self.categories.is_empty()
            && !categories.iter().any(|c| {
                self.categories
                    .iter()
                    .any(|g| g.code == c.code && (g.system.is_none() || g.system == c.system))
            })
        {
            return Err(Denied::Category);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse() {
        let s = Scope::parse("patient/Observation.cru").expect("scope");
        assert_eq!(s.resource_type.as_deref(), Some("Observation"));
        assert!(s.perms.contains(Perms::CREATE.union(Perms::UPDATE)));
        assert!(!s.perms.contains(Perms::DELETE));
        assert_eq!(
            Scope::parse("patient/*.rs").map(|s| s.resource_type),
            Ok(None)
        );
        assert!(Scope::parse("user/*.write")
            .is_ok_and(|s| s.perms.contains(Perms::DELETE) && !s.perms.contains(Perms::READ)));
        for bad in [
            "Observation.r",
            "patient/Observation",
            "patient/Nope.r",
            "patient/Observation.rc",
            "patient/Observation.cc",
            "patient/Observation.",
            "patient/Observation.x",
            "launch/Observation.r",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decisions() {
        let lab_cat = Coding::new(
            Some("http://terminology.hl7.org/CodeSystem/observation-category"),
            "laboratory",
        );
        let g = Grant::new(Role::Lab, &["patient/Observation.cu", "patient/*.r"])
            .expect("grant")
            .with_categories(vec![Coding::new(None, "laboratory")])
            .with_expiry(100);
        let cats = std::slice::from_ref(&lab_cat);
        assert_eq!(g.allows(Action::Create, "Observation", cats, 5), Ok(()));
        assert_eq!(g.allows(Action::Update, "Observation", cats, 5), Ok(()));
        assert_eq!(
            g.allows(Action::Delete, "Observation", cats, 5),
            Err(Denied::OutOfScope("Observation".into()))
        );
        assert!(g.allows(Action::Create, "Condition", cats, 5).is_err());
        assert_eq!(
            g.allows(Action::Create, "Observation", &[], 5),
            Err(Denied::Category)
        );
        assert_eq!(
            g.allows(Action::Create, "Observation", cats, 100),
            Err(Denied::Expired)
        );
        assert_eq!(
            Grant::owner().allows(Action::Delete, "Patient", &[], u64::MAX),
            Ok(())
        );
    }
}
