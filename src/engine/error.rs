use std::fmt;
use std::sync::Arc;

/// Why a read that had to load failed: the loader's error — shared by every request that
/// waited for the same load, hence the `Arc` — or a panic of the load.
///
/// ```
/// use std::sync::Arc;
/// use tower_caching::LoadError;
///
/// let error: LoadError<std::io::Error> = LoadError::Failed(Arc::new(std::io::Error::other("database down")));
/// assert_eq!(error.to_string(), "database down");
/// assert_eq!(error.loader_error().map(|e| e.kind()), Some(std::io::ErrorKind::Other));
/// assert!(LoadError::<std::io::Error>::Panicked.is_panic());
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError<E> {
    /// The loader returned an error.
    Failed(Arc<E>),
    /// The load panicked (or its task was aborted): the panic is reported by the panic hook
    /// where it happened; the key is not wedged, the next request loads again.
    Panicked,
}

impl<E> LoadError<E> {
    /// The loader's error, unless the load panicked. See [`LoadError`] for an example.
    pub fn loader_error(&self) -> Option<&E> {
        match self {
            LoadError::Failed(error) => Some(error),
            LoadError::Panicked => None,
        }
    }

    /// Whether the load panicked. See [`LoadError`] for an example.
    pub fn is_panic(&self) -> bool {
        matches!(self, LoadError::Panicked)
    }
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            LoadError::Failed(error) => LoadError::Failed(error.clone()),
            LoadError::Panicked => LoadError::Panicked,
        }
    }
}

impl<E: PartialEq> PartialEq for LoadError<E> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (LoadError::Failed(a), LoadError::Failed(b)) => a == b,
            (LoadError::Panicked, LoadError::Panicked) => true,
            _ => false,
        }
    }
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Failed(error) => error.fmt(f),
            LoadError::Panicked => f.write_str("the load panicked"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Failed(error) => error.source(),
            LoadError::Panicked => None,
        }
    }
}
