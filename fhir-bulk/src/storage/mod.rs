//! Where export files live and where they go: `gs://` reads ([`GoogleStorage`]) and
//! splitting one export across machines ([`shard`]); with the `cloud` feature, saving into
//! S3, Google Cloud Storage or Azure Blob Storage (`cloud`).

#[cfg(feature = "cloud")]
pub mod cloud;
pub mod gcs;
pub mod shard;

pub use gcs::GoogleStorage;
pub use shard::{Shard, shard_file_names, shard_files, shard_positions};
