//! Where an archive is kept: a local directory or an object-store URL, through the `object_store`
//! crate (its local file system backend for paths and `file://` URLs; the cloud schemes need a
//! build with object_store's `aws`/`gcp`/`azure` features, and say so).
//!
//! What must always hold: a file is put whole or not at all (object stores' puts are atomic; the
//! local backend writes a temporary file, fsyncs it and its directory, and renames it), so a
//! file that exists under its final name is complete; the location recorded in the catalog
//! reaches the same files from any working directory (a local path is recorded absolute).

use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::ArchiveError;

/// An archive's place.
#[derive(Clone)]
pub struct Location {
    text: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location").field("at", &self.text).finish()
    }
}

impl Location {
    /// A local directory (made if missing) or a URL (`file:///srv/archive`, `s3://bucket/prefix`
    /// where the build supports it).
    pub fn parse(text: &str) -> Result<Location, ArchiveError> {
        let bad = |reason: String| ArchiveError::Location {
            location: text.to_owned(),
            reason,
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("it is empty: give a directory or a URL".into()));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            let url = url::Url::parse(text).map_err(|e| bad(e.to_string()))?;
            if scheme == "file" {
                let dir = url
                    .to_file_path()
                    .map_err(|()| bad("not a local path".into()))?;
                return Location::local(&dir, text);
            }
            if scheme == "memory" {
                return Err(bad(
                    "memory:// holds nothing after the process ends: give a directory or a lasting store"
                        .into(),
                ));
            }
            let (store, prefix) = object_store::parse_url_opts(&url, std::env::vars()).map_err(|e| {
                bad(format!(
                    "{e} (this build of krakenbook reaches local directories and file:// URLs; other stores need it built with object_store's cloud features)"
                ))
            })?;
            return Ok(Location {
                text: text.to_owned(),
                store: Arc::from(store),
                prefix: prefix.to_string(),
            });
        }
        Location::local(std::path::Path::new(text), text)
    }

    /// An archive recorded in the catalog: as [`parse`](Self::parse), but a local directory
    /// must exist (a missing one is an archive moved or lost, not one to start).
    pub fn open(text: &str) -> Result<Location, ArchiveError> {
        let local = if let Some(rest) = text.strip_prefix("file://") {
            url::Url::parse(text)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .or_else(|| Some(std::path::PathBuf::from(rest)))
        } else if text.contains("://") {
            None
        } else {
            Some(std::path::PathBuf::from(text))
        };
        if let Some(dir) = local {
            let lost = |reason: String| ArchiveError::Lost {
                location: text.to_owned(),
                what: "the directory".into(),
                reason,
            };
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => {
                    // A directory that cannot be listed cannot be read either.
                    std::fs::read_dir(&dir).map_err(|e| lost(e.to_string()))?;
                }
                Ok(_) => return Err(lost("it is not a directory".into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(lost("it is gone: was the archive moved or deleted?".into()));
                }
                Err(e) => return Err(lost(e.to_string())),
            }
        }
        Location::parse(text)
    }

    fn local(dir: &std::path::Path, given: &str) -> Result<Location, ArchiveError> {
        let bad = |reason: String| ArchiveError::Location {
            location: given.to_owned(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create it: {e}")))?;
        let abs = std::fs::canonicalize(dir).map_err(|e| bad(e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(&abs)
            .map_err(|e| bad(e.to_string()))?
            .with_fsync(true);
        Ok(Location {
            text: abs.display().to_string(),
            store: Arc::new(store),
            prefix: String::new(),
        })
    }

    /// How the location is recorded (an absolute path for a local directory, else the URL).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn path(&self, rel: &str) -> Result<Path, ArchiveError> {
        let full = if self.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.prefix)
        };
        Path::parse(&full).map_err(|e| ArchiveError::Location {
            location: self.text.clone(),
            reason: format!("{rel}: {e}"),
        })
    }

    fn err(&self, what: &str, rel: &str) -> impl FnOnce(object_store::Error) -> ArchiveError {
        let location = self.text.clone();
        let what = format!("{what} {rel}");
        move |source| ArchiveError::ObjectStore {
            location,
            what,
            source,
        }
    }

    /// Puts a whole file.
    pub async fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        self.store
            .put(&self.path(rel)?, PutPayload::from(bytes))
            .await
            .map_err(self.err("writing", rel))?;
        Ok(())
    }

    /// Reads a whole file that the catalog lists: a file missing or unreadable is a lost archive
    /// ([`ArchiveError::Lost`], which says what to do).
    pub async fn get_archived(&self, rel: &str) -> Result<Bytes, ArchiveError> {
        self.get(rel).await.map_err(|e| match e {
            ArchiveError::ObjectStore { source, .. } => ArchiveError::Lost {
                location: self.text.clone(),
                what: format!("its file {rel}"),
                reason: match source {
                    object_store::Error::NotFound { .. } => {
                        "it is gone: was the archive moved or deleted?".into()
                    }
                    other => crate::text::printable(&other.to_string()).into_owned(),
                },
            },
            other => other,
        })
    }

    /// Reads a whole file.
    pub async fn get(&self, rel: &str) -> Result<Bytes, ArchiveError> {
        let got = self
            .store
            .get(&self.path(rel)?)
            .await
            .map_err(self.err("reading", rel))?;
        got.bytes().await.map_err(self.err("reading", rel))
    }

    /// Renames a file (replacing one of the new name).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ArchiveError> {
        self.store
            .rename(&self.path(from)?, &self.path(to)?)
            .await
            .map_err(self.err("renaming", from))
    }

    /// Deletes a file; a missing one is not an error.
    pub async fn delete(&self, rel: &str) -> Result<(), ArchiveError> {
        match self.store.delete(&self.path(rel)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("deleting", rel)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_are_put_renamed_read_and_deleted_under_hive_names() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::parse(dir.path().join("a/b").to_str().unwrap()).unwrap();
        let rel = "book/pair=USDT%2DX-EUR/date=2026-12-06/part-c.parquet";
        loc.put(&format!("{rel}.tmp"), b"abc".to_vec())
            .await
            .unwrap();
        loc.rename(&format!("{rel}.tmp"), rel).await.unwrap();
        assert_eq!(&loc.get(rel).await.unwrap()[..], b"abc");
        // The key is the file name as written: the percent sign is not encoded again.
        assert!(
            dir.path()
                .join("a/b/book/pair=USDT%2DX-EUR/date=2026-12-06/part-c.parquet")
                .is_file()
        );
        loc.delete(rel).await.unwrap();
        loc.delete(rel).await.unwrap();
        assert!(loc.get(rel).await.is_err());
    }

    #[tokio::test]
    async fn a_file_url_reaches_the_same_directory_and_unknown_stores_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let loc = Location::parse(url.as_str()).unwrap();
        loc.put("x/y.parquet", b"1".to_vec()).await.unwrap();
        assert!(dir.path().join("x/y.parquet").is_file());
        for bad in ["memory://x", "s3://bucket/prefix", ""] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
        let e = Location::parse("s3://bucket/p").unwrap_err().to_string();
        assert!(e.contains("cloud features"), "{e}");
    }
}
