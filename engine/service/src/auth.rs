//! Who may call what: API keys with roles, optionally scoped to experiments.
//!
//! Keys are high-entropy random strings (`safebet keys new` makes them), so a plain SHA-256 of the key is
//! what is stored and compared: a slow password hash would add nothing against a 256-bit secret. The key a
//! call presents (`authorization: Bearer <key>`) is hashed and compared with every configured hash in
//! constant time, so timing says nothing about which bytes matched.
//!
//! Roles: `admin` (create, change, pause, delete, export, import and report on experiments) and `decide`
//! (Decide, Reward and episode calls). A key may be limited to a list of experiments.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Create, change, pause, delete, export, import and report on experiments.
    Admin,
    /// Decide and report rewards (and run episodes).
    Decide,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Decide => "decide",
        }
    }
}

/// One configured key: its id (for logs and the audit trail), role, scope and hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// A name for the key, e.g. "checkout-service" or "ops-alice".
    pub id: String,
    /// What it may do.
    pub role: Role,
    /// The experiments it may touch; empty or absent: all.
    #[serde(default)]
    pub experiments: Vec<String>,
    /// SHA-256 of the key, hex.
    pub sha256: String,
}

/// The keys file: `[[key]]` tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// The keys.
    #[serde(default)]
    pub key: Vec<KeySpec>,
}

/// The caller a request was authenticated as; handlers check role and scope against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id ("anonymous" when no keys are configured).
    pub id: String,
    role: Option<Role>,
    experiments: Vec<String>,
}

impl Principal {
    /// Everyone, when the service runs without keys (loopback only).
    pub fn anonymous() -> Principal {
        Principal { id: "anonymous".into(), role: None, experiments: vec![] }
    }

    /// Checks that the principal may act in `role` on `experiment`.
    pub fn check(&self, role: Role, experiment: &str) -> Result<(), Status> {
        let Some(own) = self.role else { return Ok(()) };
        if own != role {
            return Err(Status::permission_denied(format!(
                "key '{}' has role '{}'; this call needs '{}'",
                self.id,
                own.name(),
                role.name()
            )));
        }
        if !self.experiments.is_empty() && !self.experiments.iter().any(|e| e == experiment) {
            return Err(Status::permission_denied(format!(
                "key '{}' may not touch experiment '{}'",
                self.id,
                experiment.escape_debug()
            )));
        }
        Ok(())
    }

    /// Checks a call that is not about one experiment (listing).
    pub fn check_role(&self, role: Role) -> Result<(), Status> {
        match self.role {
            Some(own) if own != role => Err(Status::permission_denied(format!(
                "key '{}' has role '{}'; this call needs '{}'",
                self.id,
                own.name(),
                role.name()
            ))),
            _ => Ok(()),
        }
    }
}

/// The principal of a request (set by [`Keys::interceptor`]); anonymous if none was set.
pub fn principal<T>(request: &Request<T>) -> Principal {
    request.extensions().get::<Principal>().cloned().unwrap_or_else(Principal::anonymous)
}

/// Why a keys configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The configuration is malformed.
    #[error("{0}")]
    Invalid(String),
}

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    keys: Vec<(KeySpec, [u8; 32])>,
}

/// SHA-256 of a key, hex: what the keys file stores.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Keys {
    /// No keys: authentication is off (the server then listens on loopback only).
    pub fn none() -> Keys {
        Keys::default()
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys from a TOML file of `[[key]]` tables.
    pub fn from_file(path: &Path) -> Result<Keys, KeysError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeysError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|e| KeysError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Keys from TOML text.
    pub fn parse(text: &str) -> Result<Keys, KeysError> {
        let file: KeysFile = toml::from_str(text).map_err(|e| KeysError::Invalid(e.to_string()))?;
        Self::from_specs(file.key)
    }

    /// Keys from the environment's format: `id:role:sha256[:experiment|experiment...]`, comma-separated.
    pub fn parse_env(text: &str) -> Result<Keys, KeysError> {
        let specs = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| {
                let parts: Vec<&str> = entry.split(':').collect();
                if !(3..=4).contains(&parts.len()) {
                    return Err(KeysError::Invalid(format!(
                        "'{entry}': expected id:role:sha256 or id:role:sha256:experiment|experiment"
                    )));
                }
                let role = match parts[1] {
                    "admin" => Role::Admin,
                    "decide" => Role::Decide,
                    other => {
                        return Err(KeysError::Invalid(format!("'{entry}': role '{other}' is not admin or decide")));
                    }
                };
                let experiments = parts.get(3).map(|s| s.split('|').map(str::to_owned).collect()).unwrap_or_default();
                Ok(KeySpec { id: parts[0].to_owned(), role, experiments, sha256: parts[2].to_owned() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_specs(specs)
    }

    fn from_specs(specs: Vec<KeySpec>) -> Result<Keys, KeysError> {
        let mut keys = Vec::with_capacity(specs.len());
        for spec in specs {
            let hex = spec.sha256.trim().to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(KeysError::Invalid(format!(
                    "key '{}': sha256 must be 64 hex digits (the SHA-256 of the key, not the key itself)",
                    spec.id
                )));
            }
            if keys.iter().any(|(k, _): &(KeySpec, [u8; 32])| k.id == spec.id) {
                return Err(KeysError::Invalid(format!("key id '{}' appears twice", spec.id)));
            }
            let mut digest = [0u8; 32];
            for (i, byte) in digest.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            keys.push((spec, digest));
        }
        Ok(Keys { keys })
    }

    /// The principal of a presented key, comparing its hash with every configured one in constant time.
    fn authenticate(&self, presented: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (spec, hash) in &self.keys {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(spec);
            }
        }
        found.map(|spec| Principal {
            id: spec.id.clone(),
            role: Some(spec.role),
            experiments: spec.experiments.clone(),
        })
    }

    /// A tonic interceptor: attaches the caller's [`Principal`] to the request, or refuses it with
    /// UNAUTHENTICATED. Without keys every request is anonymous.
    pub fn interceptor(&self) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let keys = self.clone();
        move |mut request: Request<()>| {
            if keys.is_empty() {
                request.extensions_mut().insert(Principal::anonymous());
                return Ok(request);
            }
            let header = request
                .metadata()
                .get("authorization")
                .ok_or_else(|| Status::unauthenticated("missing 'authorization: Bearer <key>' metadata"))?;
            let token = header
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| Status::unauthenticated("authorization metadata must be 'Bearer <key>'"))?;
            let principal =
                keys.authenticate(token.trim()).ok_or_else(|| Status::unauthenticated("unknown API key"))?;
            request.extensions_mut().insert(principal);
            Ok(request)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_authenticate_by_hash_and_check_role_and_scope() {
        let text = format!(
            "[[key]]\nid = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n\n[[key]]\nid = \"svc\"\nrole = \"decide\"\n\
             experiments = [\"a\"]\nsha256 = \"{}\"\n",
            hash_key("admin-secret"),
            hash_key("decide-secret")
        );
        let keys = Keys::parse(&text).unwrap();
        let admin = keys.authenticate("admin-secret").unwrap();
        let decide = keys.authenticate("decide-secret").unwrap();
        assert!(keys.authenticate("guess").is_none());
        assert!(admin.check(Role::Admin, "anything").is_ok());
        assert_eq!(admin.check(Role::Decide, "a").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(decide.check(Role::Decide, "a").is_ok());
        assert_eq!(decide.check(Role::Decide, "b").unwrap_err().code(), tonic::Code::PermissionDenied);
        let env = Keys::parse_env(&format!("svc:decide:{}:a|b", hash_key("k"))).unwrap();
        assert!(env.authenticate("k").unwrap().check(Role::Decide, "b").is_ok());
        assert!(Keys::parse("[[key]]\nid = \"x\"\nrole = \"admin\"\nsha256 = \"plaintext\"\n").is_err());
        assert!(Keys::parse_env("x:root:abc").is_err());
    }
}
