//! Who a policy binding names, in IAM's member syntax (`allUsers`, `allAuthenticatedUsers`,
//! `user:EMAIL`, `serviceAccount:EMAIL`), and who a caller is once authenticated.

use std::fmt;

/// A policy member. Google's other member kinds (`group:`, `domain:`, `principal://`, ...)
/// are refused by name when a policy is parsed: Wharf has no groups or domains.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// Anyone, with or without credentials.
    AllUsers,
    /// Anyone with valid Wharf credentials.
    AllAuthenticatedUsers,
    /// A user, by email.
    User(String),
    /// A service account, by email.
    ServiceAccount(String),
}

/// Why a member string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("member '{0}' has no kind: write allUsers, allAuthenticatedUsers, user:EMAIL or serviceAccount:EMAIL")]
    NoKind(String),
    #[error(
        "member kind '{kind}' is not supported by Wharf (it has no groups, domains or federated identities): use user:EMAIL or serviceAccount:EMAIL"
    )]
    UnsupportedKind { kind: String },
    #[error("member '{0}' does not name a valid email address (NAME@DOMAIN)")]
    BadEmail(String),
}

impl Member {
    pub fn parse(text: &str) -> Result<Member, MemberError> {
        match text {
            "allUsers" => return Ok(Member::AllUsers),
            "allAuthenticatedUsers" => return Ok(Member::AllAuthenticatedUsers),
            _ => {}
        }
        let (kind, email) = text.split_once(':').ok_or_else(|| MemberError::NoKind(text.to_owned()))?;
        if !is_email(email) {
            return Err(MemberError::BadEmail(text.to_owned()));
        }
        match kind {
            "user" => Ok(Member::User(email.to_ascii_lowercase())),
            "serviceAccount" => Ok(Member::ServiceAccount(email.to_ascii_lowercase())),
            _ => Err(MemberError::UnsupportedKind { kind: kind.to_owned() }),
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::AllUsers => f.write_str("allUsers"),
            Member::AllAuthenticatedUsers => f.write_str("allAuthenticatedUsers"),
            Member::User(email) => write!(f, "user:{email}"),
            Member::ServiceAccount(email) => write!(f, "serviceAccount:{email}"),
        }
    }
}

/// Stored and sent in member syntax.
impl serde::Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Member, D::Error> {
        let text = String::deserialize(deserializer)?;
        Member::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && text.len() <= 254
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "@._+-".contains(c))
}

/// An authenticated caller: the server's owner (every permission everywhere), a user or a
/// service account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Owner,
    User(String),
    ServiceAccount(String),
}

impl Principal {
    /// The member that names this principal in a binding (the owner is never bound: it holds
    /// every permission by construction).
    pub fn member(&self) -> Option<Member> {
        match self {
            Principal::Owner => None,
            Principal::User(email) => Some(Member::User(email.clone())),
            Principal::ServiceAccount(email) => Some(Member::ServiceAccount(email.clone())),
        }
    }

    /// The principal as audit logs and error messages name it.
    pub fn name(&self) -> String {
        match self {
            Principal::Owner => "owner".to_owned(),
            Principal::User(email) => format!("user:{email}"),
            Principal::ServiceAccount(email) => format!("serviceAccount:{email}"),
        }
    }

    /// Parses what [`Principal::name`] writes (the form stored with credentials).
    pub fn from_name(name: &str) -> Option<Principal> {
        if name == "owner" {
            return Some(Principal::Owner);
        }
        match Member::parse(name).ok()? {
            Member::User(email) => Some(Principal::User(email)),
            Member::ServiceAccount(email) => Some(Principal::ServiceAccount(email)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_bad_ones_say_why() {
        for text in
            ["allUsers", "allAuthenticatedUsers", "user:ann@example.com", "serviceAccount:a@p.iam.gserviceaccount.com"]
        {
            assert_eq!(Member::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Member::parse("user:Ann@Example.com").unwrap().to_string(), "user:ann@example.com");
        assert!(matches!(Member::parse("group:g@example.com"), Err(MemberError::UnsupportedKind { .. })));
        assert!(matches!(Member::parse("ann@example.com"), Err(MemberError::NoKind(_))));
        assert!(matches!(Member::parse("user:ann"), Err(MemberError::BadEmail(_))));
        assert!(matches!(Member::parse("user:a b@example.com"), Err(MemberError::BadEmail(_))));
    }

    #[test]
    fn principals_name_themselves_in_member_syntax() {
        for p in [
            Principal::Owner,
            Principal::User("u@e.com".into()),
            Principal::ServiceAccount("s@p.iam.gserviceaccount.com".into()),
        ] {
            assert_eq!(Principal::from_name(&p.name()), Some(p));
        }
    }
}
