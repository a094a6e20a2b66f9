//! The auth provider the flags ask for.

use crate::args::ServerArgs;
use crate::error::CliError;
use fhir_bulk::auth::{AuthProvider, StaticToken};
use std::sync::Arc;

/// The provider for `--token` / `FHIR_BULK_TOKEN`, or none when no credentials were given.
pub(crate) fn provider(args: &ServerArgs) -> Result<Option<Arc<dyn AuthProvider>>, CliError> {
    Ok(args
        .token
        .as_ref()
        .map(|token| Arc::new(StaticToken::new(token.expose_secret())) as Arc<dyn AuthProvider>))
}

/// Whether any credentials were given (then the FHIR base must be known, so the token goes
/// only to that server).
pub(crate) fn has_credentials(args: &ServerArgs) -> bool {
    args.token.is_some()
}
