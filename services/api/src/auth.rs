//! Bearer tokens → (tenant, role, user). Tokens come from a TSV file
//! (`token<TAB>tenant<TAB>role[<TAB>user]`); only their SHA-256 digests are kept in memory, and
//! neither tokens nor digests are ever logged.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tokens file line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("the tokens file defines no token")]
    Empty,
}

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The phone system: submits, reads, reprocesses and deletes its tenant's recordings.
    Pbx,
    /// One user's app: reads that user's results and manages their own topics.
    User,
    /// A tenant administrator: everything in the tenant, including policy.
    Admin,
}

impl Role {
    fn parse(word: &str) -> Option<Role> {
        match word.trim().to_ascii_lowercase().as_str() {
            "pbx" => Some(Role::Pbx),
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The authenticated caller of one request (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub role: Role,
    /// The user a `user` token belongs to.
    pub user: Option<String>,
}

impl Caller {
    /// Refuses callers whose role is not among `allowed`.
    pub fn require(&self, allowed: &[Role], action: &str) -> Result<(), Status> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "a {:?} token may not {action}",
                self.role
            )))
        }
    }

    /// The user a request is about: a user token may only name itself (an empty id means
    /// itself); other roles must name one when `required`.
    pub fn user_scope(&self, requested: &str, required: bool) -> Result<Option<String>, Status> {
        let requested = requested.trim();
        match self.role {
            Role::User => {
                let own = self.user.clone().unwrap_or_default();
                if requested.is_empty() || requested == own {
                    Ok(Some(own))
                } else {
                    Err(Status::permission_denied(
                        "a user token may only act on its own user",
                    ))
                }
            }
            _ if requested.is_empty() && required => {
                Err(Status::invalid_argument("user_id is required"))
            }
            _ if requested.is_empty() => Ok(None),
            _ => Ok(Some(requested.to_string())),
        }
    }
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Caller>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.by_digest.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Tokens::parse(&text)
    }

    /// Parses the TSV text; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Tokens, AuthError> {
        let mut tokens = Tokens::default();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let bad = |reason: &str| AuthError::Line {
                line: line_no,
                reason: reason.to_string(),
            };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
            if !(3..=4).contains(&fields.len()) {
                return Err(bad("expected token<TAB>tenant<TAB>role[<TAB>user]"));
            }
            let (token, tenant) = (fields[0], fields[1]);
            if token.len() < 16 {
                return Err(bad("tokens must be at least 16 characters"));
            }
            if tenant.is_empty() {
                return Err(bad("empty tenant"));
            }
            let role =
                Role::parse(fields[2]).ok_or_else(|| bad("role must be pbx, user or admin"))?;
            let user = fields
                .get(3)
                .filter(|u| !u.is_empty())
                .map(|u| u.to_string());
            if role == Role::User && user.is_none() {
                return Err(bad("a user token needs the user id in the fourth column"));
            }
            let caller = Caller {
                tenant: tenant.to_string(),
                role,
                user,
            };
            if tokens.by_digest.insert(digest(token), caller).is_some() {
                return Err(bad("the same token appears twice"));
            }
        }
        if tokens.by_digest.is_empty() {
            return Err(AuthError::Empty);
        }
        Ok(tokens)
    }

    /// The caller behind a request's `authorization: Bearer <token>` header.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let header = header
            .to_str()
            .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("authorization must be a Bearer token"))?;
        self.by_digest
            .get(&digest(token))
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// A tonic interceptor that authenticates every request and stores its [`Caller`].
    pub fn interceptor(
        self: std::sync::Arc<Self>,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |mut request: Request<()>| {
            let caller = self.authenticate(request.metadata())?;
            request.extensions_mut().insert(caller);
            Ok(request)
        }
    }
}

/// The caller the interceptor stored in a request.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# token\ttenant\trole\tuser\n\
        pbx-token-0123456789\tacme\tpbx\n\
        \n\
        user-token-0123456789\tacme\tuser\tu1\n\
        admin-token-012345678\tglobex\tadmin\n";

    fn request(header: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        r
    }

    #[test]
    fn tokens_map_to_callers() {
        let tokens = Tokens::parse(FILE).unwrap();
        let pbx = tokens
            .authenticate(request(Some("Bearer pbx-token-0123456789")).metadata())
            .unwrap();
        assert_eq!((pbx.tenant.as_str(), pbx.role), ("acme", Role::Pbx));
        let user = tokens
            .authenticate(request(Some("Bearer user-token-0123456789")).metadata())
            .unwrap();
        assert_eq!(user.user.as_deref(), Some("u1"));
        for header in [
            None,
            Some("Bearer nope-nope-nope-nope"),
            Some("Basic abc"),
            Some("Bearer "),
        ] {
            let err = tokens.authenticate(request(header).metadata()).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{header:?}");
        }
        // The Debug form never shows a token.
        assert!(!format!("{tokens:?}").contains("token-0"));
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        for (text, line) in [
            ("short\tacme\tpbx\n", 1),
            ("x\n", 1),
            ("pbx-token-0123456789\tacme\tboss\n", 1),
            ("# c\nuser-token-0123456789\tacme\tuser\n", 2),
            (
                "pbx-token-0123456789\tacme\tpbx\npbx-token-0123456789\tacme\tadmin\n",
                2,
            ),
        ] {
            match Tokens::parse(text) {
                Err(AuthError::Line { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            Tokens::parse("# nothing\n"),
            Err(AuthError::Empty)
        ));
    }

    #[test]
    fn user_tokens_act_on_their_own_user_only() {
        let user = Caller {
            tenant: "acme".into(),
            role: Role::User,
            user: Some("u1".into()),
        };
        assert_eq!(user.user_scope("", true).unwrap().as_deref(), Some("u1"));
        assert_eq!(user.user_scope("u1", true).unwrap().as_deref(), Some("u1"));
        assert_eq!(
            user.user_scope("u2", false).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let pbx = Caller {
            tenant: "acme".into(),
            role: Role::Pbx,
            user: None,
        };
        assert_eq!(pbx.user_scope("", false).unwrap(), None);
        assert_eq!(
            pbx.user_scope("", true).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            pbx.require(&[Role::Admin], "write policy")
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
    }
}
