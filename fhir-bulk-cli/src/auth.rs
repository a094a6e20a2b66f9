//! The auth provider the flags ask for: a static bearer token, SMART Backend Services
//! (`private_key_jwt`) or a client secret, with the secrets optionally from the environment.

use crate::args::ServerArgs;
use crate::error::{CliError, from_lib};
use fhir_bulk::SecretString;
use fhir_bulk::auth::{AuthProvider, ClientSecretAuth, SmartBackendAuth, StaticToken};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this run was given credentials (set by [`provider`]): a 401 then means they were
/// refused, not missing.
pub(crate) static CREDENTIALS_GIVEN: AtomicBool = AtomicBool::new(false);

/// The environment variable read when `--token` is not given.
pub(crate) const TOKEN_ENV: &str = "FHIR_BULK_TOKEN";
/// The environment variable read when `--client-secret` is not given.
pub(crate) const SECRET_ENV: &str = "FHIR_BULK_CLIENT_SECRET";

/// A secret from the environment; unset or blank is none.
fn env_secret(name: &str) -> Option<SecretString> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| SecretString::new(v.trim()))
}

/// The provider the flags describe, or none when no credentials were given. Conflicting or
/// incomplete flags are usage errors naming the flag.
pub(crate) fn provider(args: &ServerArgs) -> Result<Option<Arc<dyn AuthProvider>>, CliError> {
    let provider = build_provider(args)?;
    if provider.is_some() {
        CREDENTIALS_GIVEN.store(true, Ordering::Relaxed);
    }
    Ok(provider)
}

/// Whether `value` is the one the environment variable `name` holds (clap fills a flag from
/// its variable): a token in FHIR_BULK_TOKEN does not conflict with `--client-id` given on
/// the command line, nor FHIR_BULK_CLIENT_SECRET with `--private-key`.
fn from_env(value: &Option<SecretString>, name: &str) -> bool {
    match (value, env_secret(name)) {
        (Some(value), Some(env)) => value.expose_secret() == env.expose_secret(),
        _ => false,
    }
}

fn build_provider(args: &ServerArgs) -> Result<Option<Arc<dyn AuthProvider>>, CliError> {
    let mut args = args.clone();
    if args.client_id.is_some() && from_env(&args.token, TOKEN_ENV) {
        args.token = None;
    }
    if (args.client_id.is_none() || args.private_key.is_some())
        && from_env(&args.client_secret, SECRET_ENV)
    {
        args.client_secret = None;
    }
    build_checked(&args)
}

fn build_checked(args: &ServerArgs) -> Result<Option<Arc<dyn AuthProvider>>, CliError> {
    let Some(client_id) = &args.client_id else {
        let needs_client = [
            ("--private-key", args.private_key.is_some()),
            ("--key-id", args.key_id.is_some()),
            ("--token-url", args.token_url.is_some()),
            ("--scope", args.scope.is_some()),
            ("--client-secret", args.client_secret.is_some()),
        ];
        if let Some((flag, _)) = needs_client.iter().find(|(_, given)| *given) {
            return Err(CliError::usage(
                flag,
                "needs --client-id (SMART Backend Services or a client secret)",
            ));
        }
        let token = args.token.clone().or_else(|| env_secret(TOKEN_ENV));
        return Ok(token.map(|token| {
            Arc::new(StaticToken::new(token.expose_secret())) as Arc<dyn AuthProvider>
        }));
    };
    if args.token.is_some() {
        return Err(CliError::usage(
            "--token",
            "give either a static --token or --client-id credentials, not both",
        ));
    }
    match (&args.private_key, &args.client_secret) {
        (Some(_), Some(_)) => Err(CliError::usage(
            "--client-secret",
            "give either --private-key (SMART Backend Services) or --client-secret, not both",
        )),
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(
                    "--private-key",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let key = SecretString::new(text.trim());
            let mut builder = SmartBackendAuth::builder(client_id);
            builder = if text.trim_start().starts_with('{') {
                builder.jwks(key)
            } else {
                builder.private_key_pem(key)
            };
            if let Some(kid) = &args.key_id {
                builder = builder.kid(kid);
            }
            if let Some(url) = &args.token_url {
                builder = builder.token_url(url);
            }
            if let Some(scope) = &args.scope {
                builder = builder.scope(scope);
            }
            let auth = builder.build().map_err(from_lib)?;
            Ok(Some(Arc::new(auth)))
        }
        (None, secret) => {
            if args.key_id.is_some() {
                return Err(CliError::usage(
                    "--key-id",
                    "is for --private-key (SMART Backend Services)",
                ));
            }
            let secret = secret
                .clone()
                .or_else(|| env_secret(SECRET_ENV))
                .ok_or_else(|| {
                    CliError::usage(
                        "--client-id",
                        format!(
                            "needs --private-key <FILE> (SMART Backend Services) or \
                         --client-secret <SECRET> (or {SECRET_ENV})"
                        ),
                    )
                })?;
            let mut builder = ClientSecretAuth::builder(client_id, secret);
            if let Some(url) = &args.token_url {
                builder = builder.token_url(url);
            }
            if let Some(scope) = &args.scope {
                builder = builder.scope(scope);
            }
            let auth = builder.build().map_err(from_lib)?;
            Ok(Some(Arc::new(auth)))
        }
    }
}

/// Whether any credentials were given (then the FHIR base must be known, so the token goes
/// only to that server).
pub(crate) fn has_credentials(args: &ServerArgs) -> bool {
    args.token.is_some() || args.client_id.is_some() || env_secret(TOKEN_ENV).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn key(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/keys")
            .join(name)
    }

    fn flag_of(args: ServerArgs) -> String {
        match provider(&args) {
            Err(CliError::Usage(m)) => m.split(':').next().unwrap().to_owned(),
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn builds_each_kind_of_provider() {
        let smart = ServerArgs {
            client_id: Some("cid".into()),
            private_key: Some(key("rsa-private.pem")),
            key_id: Some("k1".into()),
            token_url: Some("https://auth.example/token".into()),
            ..ServerArgs::default()
        };
        let p = provider(&smart).unwrap().unwrap();
        assert!(format!("{p:?}").contains("SmartBackendAuth"));
        let jwks = ServerArgs {
            client_id: Some("cid".into()),
            private_key: Some(key("private-jwks.json")),
            key_id: Some("test-ec-1".into()),
            ..ServerArgs::default()
        };
        assert!(provider(&jwks).unwrap().is_some());
        let secret = ServerArgs {
            client_id: Some("cid".into()),
            client_secret: Some(SecretString::new("s")),
            ..ServerArgs::default()
        };
        let p = provider(&secret).unwrap().unwrap();
        assert!(format!("{p:?}").contains("ClientSecretAuth"));
        let token = ServerArgs {
            token: Some(SecretString::new("t")),
            ..ServerArgs::default()
        };
        assert!(provider(&token).unwrap().is_some());
    }

    #[test]
    fn bad_combinations_name_the_flag() {
        let with = |f: fn(&mut ServerArgs)| {
            let mut a = ServerArgs {
                client_id: Some("cid".into()),
                ..ServerArgs::default()
            };
            f(&mut a);
            a
        };
        assert_eq!(
            flag_of(ServerArgs {
                private_key: Some(key("rsa-private.pem")),
                ..ServerArgs::default()
            }),
            "--private-key"
        );
        assert_eq!(
            flag_of(with(|a| a.token = Some(SecretString::new("t")))),
            "--token"
        );
        assert_eq!(
            flag_of(with(|a| {
                a.private_key = Some(key("rsa-private.pem"));
                a.client_secret = Some(SecretString::new("s"));
            })),
            "--client-secret"
        );
        assert_eq!(
            flag_of(with(|a| a.private_key = Some(key("rsa-private.pem")))),
            "--key-id",
            "a PEM key needs its kid"
        );
        assert_eq!(
            flag_of(with(
                |a| a.private_key = Some(PathBuf::from("/nonexistent.pem"))
            )),
            "--private-key"
        );
        assert_eq!(
            flag_of(with(|a| a.private_key = Some(key("rsa-public.pem")))),
            "--private-key"
        );
        assert_eq!(
            flag_of(with(|a| {
                a.client_secret = Some(SecretString::new("s"));
                a.key_id = Some("k".into());
            })),
            "--key-id"
        );
    }
}
