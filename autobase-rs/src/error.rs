//! Errors.

/// Errors of [`crate::Autobase`] operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying hypercore or storage failed.
    #[error(transparent)]
    Core(#[from] hypercore_rs::Error),
    /// A view failed for a reason that is not the same on every peer (I/O).
    #[error(transparent)]
    Bee(#[from] hyperbee_rs::Error),
    /// Replication ended with an error.
    #[error("replication: {0}")]
    Replication(String),
    /// This peer is not (or no longer) a writer of the base.
    #[error("this peer is not a writer of the base")]
    NotWritable,
    /// No view has this name.
    #[error("no view is called {0:?}")]
    UnknownView(String),
    /// The stored system record is unreadable.
    #[error("corrupt autobase state: {0}")]
    Corrupt(&'static str),
    /// This peer's input core holds a block every peer rejects (written
    /// outside this base, or malformed): its later blocks are ignored.
    #[error("this peer's input was rejected")]
    InputRejected,
    /// A checkpoint was refused (forged, under-signed, stale, or its view
    /// blocks do not match).
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// An empty batch was given to append.
    #[error("an append needs at least one value")]
    Empty,
}

/// Why `apply` refused a node. Every variant except an I/O failure of a view
/// is deterministic and makes the node rejected on every peer alike.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The user's logic rejected the node (e.g. not allowed by consent).
    #[error("rejected: {0}")]
    Rejected(String),
    /// No view has this name.
    #[error("no view is called {0:?}")]
    UnknownView(String),
    /// The last indexer cannot be removed.
    #[error("the last indexer cannot be removed")]
    LastIndexer,
    /// A view operation failed.
    #[error(transparent)]
    Bee(#[from] hyperbee_rs::Error),
}

impl ApplyError {
    /// Whether the failure is the same on every peer (so the node is skipped)
    /// rather than a local I/O failure (so the update stops and is retried).
    pub(crate) fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            ApplyError::Bee(
                hyperbee_rs::Error::Core(_)
                    | hyperbee_rs::Error::Corrupt(_)
                    | hyperbee_rs::Error::BlockNotAvailable(_)
            )
        )
    }
}
