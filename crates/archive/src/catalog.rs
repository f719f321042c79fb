//! The catalog of archived parts: `krakenbook_archive` (migration 7), one row per part, written
//! in the transaction that drops the part's rows (see `migrations/0007_archive.sql`).
//!
//! What must always hold: a part is in the catalog exactly when its rows are gone from the tables
//! and its files are complete at `location`; readers find every file of a part in its manifest,
//! never by listing the store.

use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use crate::ArchiveError;
use crate::naming::Dataset;
use crate::time::Timestamp;

/// One file of a part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its dataset.
    pub dataset: Dataset,
    /// The exact symbol of its rows (`None`: rows without one, or a dataset not by pair).
    pub symbol: Option<String>,
    /// Its path under the location.
    pub path: String,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// Digest of its cells ([`crate::columns::Digest`]).
    pub digest: String,
}

/// An archived part, as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedPart {
    /// The book table's chunk it was.
    pub chunk: String,
    /// Range start (inclusive).
    pub range_start: Timestamp,
    /// Range end (exclusive).
    pub range_end: Timestamp,
    /// Where its files are.
    pub location: String,
    /// Book messages.
    pub messages: i64,
    /// Total bytes.
    pub bytes: i64,
    /// Its files.
    pub files: Vec<FileEntry>,
}

/// Whether the catalog table exists (schema version 7 or later).
pub async fn exists(client: &impl GenericClient) -> Result<bool, ArchiveError> {
    Ok(client
        .query_one("SELECT to_regclass('krakenbook_archive') IS NOT NULL", &[])
        .await
        .map_err(|source| ArchiveError::Db {
            context: "looking for the archive catalog".into(),
            source,
        })?
        .get(0))
}

/// The archived parts whose range overlaps `[from, to]` (all when `None`), oldest first; none
/// when the catalog does not exist.
pub async fn archived_overlapping(
    client: &impl GenericClient,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Result<Vec<ArchivedPart>, ArchiveError> {
    if !exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT chunk, range_start, range_end, location, messages, bytes, manifest::text
               FROM public.krakenbook_archive
              WHERE state = 'archived'
                AND ($1::timestamptz IS NULL OR range_end > $1)
                AND ($2::timestamptz IS NULL OR range_start <= $2)
              ORDER BY range_start, chunk",
            &[&from, &to],
        )
        .await
        .map_err(|source| ArchiveError::Db {
            context: "reading the archive catalog".into(),
            source,
        })?;
    rows.iter()
        .map(|r| {
            let chunk: String = r.get(0);
            let manifest: String = r.get(6);
            let files: Vec<FileEntry> =
                serde_json::from_str(&manifest).map_err(|e| ArchiveError::Invalid {
                    what: format!("manifest of archived part {chunk}"),
                    reason: e.to_string(),
                })?;
            Ok(ArchivedPart {
                chunk,
                range_start: r.get(1),
                range_end: r.get(2),
                location: r.get(3),
                messages: r.get(4),
                bytes: r.get(5),
                files,
            })
        })
        .collect()
}

/// Records a part (inside the transaction that drops its rows).
pub async fn record(client: &impl GenericClient, part: &ArchivedPart) -> Result<(), ArchiveError> {
    let manifest = serde_json::to_string(&part.files).map_err(|e| ArchiveError::Invalid {
        what: "the manifest".into(),
        reason: e.to_string(),
    })?;
    let files = i32::try_from(part.files.len()).unwrap_or(i32::MAX);
    client
        .execute(
            "INSERT INTO krakenbook_archive (chunk, range_start, range_end, location, files,
                                             messages, bytes, manifest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb)",
            &[
                &part.chunk,
                &part.range_start,
                &part.range_end,
                &part.location,
                &files,
                &part.messages,
                &part.bytes,
                &manifest,
            ],
        )
        .await
        .map_err(|source| ArchiveError::Db {
            context: format!("recording archived part {}", part.chunk),
            source,
        })?;
    Ok(())
}
