//! This machine's identity as the journal and the database writer name it.
//!
//! What must always hold: [`hostname`] never fails; it falls back to `collector`.

/// This machine's host name (the default collector name), or `collector`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "collector".to_owned())
}
